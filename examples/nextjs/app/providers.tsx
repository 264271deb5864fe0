"use client";
// Step 1 of 3: the provider around the app. It asks the app's own /api/ai-session route
// for session tokens; the page never sees the secret key.
import type { ReactNode } from "react";
import { type Connection, WattfareProvider } from "wattfare/react";

async function getToken(): Promise<string> {
  const response = await fetch("/api/ai-session", { method: "POST" });
  if (!response.ok) throw new Error(`/api/ai-session answered ${response.status}`);
  return ((await response.json()) as { token: string }).token;
}

export function Providers(props: {
  publishableKey: string;
  gatewayURL: string;
  initialConnection: Connection | null;
  children: ReactNode;
}): ReactNode {
  return (
    <WattfareProvider
      publishableKey={props.publishableKey}
      baseURL={props.gatewayURL}
      session={getToken}
      initialConnection={props.initialConnection}
      pollMs={2000}
    >
      {props.children}
    </WattfareProvider>
  );
}
