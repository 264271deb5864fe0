import { currentUser } from "@/lib/user";

import { Chat } from "./chat";

export default async function Home() {
  const user = await currentUser();
  return (
    <main>
      <header>
        <strong>Acme Chat</strong>
        <span>{user ? `signed in as ${user}` : "not signed in"}</span>
      </header>
      {user ? (
        <Chat />
      ) : (
        <form className="panel" action="/api/sign-in" method="post">
          <label htmlFor="user">Your name</label>
          <input id="user" name="user" required maxLength={64} />
          <button type="submit">Sign in</button>
        </form>
      )}
    </main>
  );
}
