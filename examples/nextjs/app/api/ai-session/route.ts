// Step 2 of 3: a route that mints a 10-minute Wattfare session for the signed-in user.
// The browser SDK (wattfare/react's WattfareProvider) calls it; it is minted locally,
// with no call to the gateway.
import { currentUser } from "@/lib/user";
import { wattfare } from "@/lib/wattfare";

export async function POST(): Promise<Response> {
  const userId = await currentUser();
  if (userId === null) return Response.json({ error: "Sign in first" }, { status: 401 });
  const session = await wattfare().createSession(userId, { requestLimit: { monthlyUsd: 5 } });
  return Response.json(session, { headers: { "cache-control": "no-store" } });
}
