// The example's stand-in for a real sign-in: remember a user id in a cookie.
import { cookies } from "next/headers";
import { validUserId } from "wattfare/server";

import { USER_COOKIE } from "@/lib/user";

export async function POST(request: Request): Promise<Response> {
  const form = await request.formData();
  const user = String(form.get("user") ?? "").trim();
  if (!validUserId(user)) return Response.json({ error: "Pick a user name" }, { status: 400 });
  (await cookies()).set(USER_COOKIE, user, { httpOnly: true, sameSite: "lax", path: "/" });
  return new Response(null, { status: 303, headers: { location: "/" } });
}
