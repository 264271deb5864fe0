// The signed-in user. This example signs people in with a name in a cookie; a real app
// takes the id from its own auth (NextAuth, Clerk, a session table, …). Wattfare needs
// only a stable id per user.
import { cookies } from "next/headers";
import { validUserId } from "wattfare/server";

export const USER_COOKIE = "example_user";

export async function currentUser(): Promise<string | null> {
  const value = (await cookies()).get(USER_COOKIE)?.value;
  return value !== undefined && validUserId(value) ? value : null;
}
