import type { ReactNode } from "react";
import type { Connection } from "wattfare/react";

import { currentUser } from "@/lib/user";
import { gatewayURL, wattfare } from "@/lib/wattfare";

import { Providers } from "./providers";
import "./styles.css";

export const metadata = { title: "Acme Chat · Wattfare example" };
export const dynamic = "force-dynamic";

export default async function RootLayout({ children }: { children: ReactNode }) {
  const user = await currentUser();
  // Rendered on the server with the user's real connection, so the first paint is right
  // (no "not connected" flash before the browser asks).
  const initial: Connection | null = user
    ? await wattfare().user(user).connection().catch(() => null)
    : null;
  return (
    <html lang="en">
      <body>
        <Providers
          publishableKey={await wattfare().publishableKey()}
          gatewayURL={gatewayURL()}
          initialConnection={initial}
        >
          {children}
        </Providers>
      </body>
    </html>
  );
}
