"use client";
// wattfare/react: the browser SDK as React state.
//
//   <WattfareProvider publishableKey="pk_live_…" baseURL="https://gateway.example"
//                     session={() => fetch("/api/ai-session").then((r) => r.json()).then((s) => s.token)}>
//     <App />
//   </WattfareProvider>
//
//   const { connect, disconnect, connected, status, spentUsd, remainingUsd, error } = useWattfare();
//
// Safe under server rendering: nothing touches `window` until the provider has mounted.
// Until the first status is known, `status` is "loading" (never a guessed
// "not_connected"), so a page shows no wrong state first; a server component that knows
// the connection (wattfare/server's `wf.user(id).connection()`) can pass it as
// `initialConnection`, and the very first render is already right.

import { createContext, createElement, useCallback, useContext, useEffect, useMemo, useRef, useState, type ReactNode } from "react";

import { Wattfare, WattfareError, type Connection } from "../client/index.js";

export { Wattfare, WattfareError, type Connection, type WattfareErrorCode } from "../client/index.js";

/** "loading" until the first answer; "unavailable" when none could be had (see `error`). */
export type WattfareStatus = "loading" | "unavailable" | "connecting" | Connection["status"];

export interface WattfareState {
  /** Opens the consent popup; call it from a click handler. Resolves with the
   *  connection, or null when it did not connect (the reason is in `error`). */
  connect: () => Promise<Connection | null>;
  /** The app disconnects the user. */
  disconnect: () => Promise<Connection | null>;
  /** Reads the connection again. */
  refresh: () => Promise<Connection | null>;
  connected: boolean;
  status: WattfareStatus;
  monthlyCapUsd: number | null;
  spentUsd: number | null;
  remainingUsd: number | null;
  connection: Connection | null;
  /** The last failure, with its code (popup_blocked, closed, denied, expired,
   *  origin_not_allowed, network_error, …) and an explanation; null after a success. */
  error: WattfareError | null;
  /** The SDK itself (null until mounted in the browser). */
  client: Wattfare | null;
}

export interface WattfareProviderProps {
  publishableKey: string;
  /** Returns a session token from the app's backend for the signed-in user. */
  session: () => Promise<string> | string;
  /** The gateway, e.g. "https://gateway.example". */
  baseURL: string;
  /** The connection as the server knows it, for a first render without "loading". */
  initialConnection?: Connection | null;
  /** Re-read the status this often (ms) so a revocation on the dashboard shows; 0 = never. Default 15000. */
  pollMs?: number;
  children?: ReactNode;
}

const Context = createContext<WattfareState | null>(null);

function asError(error: unknown): WattfareError {
  if (error instanceof WattfareError) return error;
  return new WattfareError("api_error", error instanceof Error ? error.message : String(error));
}

export function WattfareProvider(props: WattfareProviderProps): ReactNode {
  const { publishableKey, baseURL, initialConnection = null, pollMs = 15_000, children } = props;
  const [client, setClient] = useState<Wattfare | null>(null);
  const [connection, setConnection] = useState<Connection | null>(initialConnection);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<WattfareError | null>(null);
  // The latest session function, without re-creating the client when a parent passes a
  // new arrow function on every render.
  const sessionRef = useRef(props.session);
  sessionRef.current = props.session;

  useEffect(() => {
    const made = new Wattfare({ publishableKey, baseURL, session: () => sessionRef.current() });
    const off = made.onChange(setConnection);
    setClient(made);
    made.status().then(() => setError(null), (failure: unknown) => setError(asError(failure)));
    return () => {
      off();
      setClient(null);
    };
  }, [publishableKey, baseURL]);

  useEffect(() => {
    if (client === null || pollMs <= 0) return undefined;
    const timer = setInterval(() => { client.status().catch(() => undefined); }, pollMs);
    return () => clearInterval(timer);
  }, [client, pollMs]);

  const run = useCallback(
    async (action: (made: Wattfare) => Promise<Connection>, connecting: boolean): Promise<Connection | null> => {
      if (client === null) {
        setError(new WattfareError("network_error", "Wattfare is still loading; try again in a moment"));
        return null;
      }
      if (connecting) setBusy(true);
      try {
        const result = await action(client);
        setError(null);
        return result;
      } catch (failure) {
        const typed = asError(failure);
        setError(typed);
        return null;
      } finally {
        if (connecting) setBusy(false);
      }
    },
    [client],
  );

  const connect = useCallback(() => run((made) => made.connect(), true), [run]);
  const disconnect = useCallback(() => run((made) => made.disconnect(), false), [run]);
  const refresh = useCallback(() => run((made) => made.status(), false), [run]);

  const value = useMemo<WattfareState>(() => {
    const known = connection?.status;
    const status: WattfareStatus = busy ? "connecting" : known ?? (error ? "unavailable" : "loading");
    return {
      connect, disconnect, refresh, client, connection, error, status,
      connected: known === "connected",
      monthlyCapUsd: connection?.monthly_cap_usd ?? null,
      spentUsd: connection ? connection.spent_usd : null,
      remainingUsd: connection?.remaining_usd ?? null,
    };
  }, [connect, disconnect, refresh, client, connection, error, busy]);

  return createElement(Context.Provider, { value }, children);
}

/** The user's Wattfare connection and the actions on it; inside a WattfareProvider. */
export function useWattfare(): WattfareState {
  const state = useContext(Context);
  if (state === null) throw new Error("useWattfare() must be used inside a <WattfareProvider>");
  return state;
}
