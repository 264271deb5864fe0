"use client";
import { useChat } from "@ai-sdk/react";
import { type FormEvent, useState } from "react";
import { useWattfare } from "wattfare/react";

const money = (usd: number | null) => (usd == null ? "–" : `$${usd.toFixed(2)}`);

export function Chat() {
  const { connect, disconnect, connected, status, monthlyCapUsd, spentUsd, remainingUsd, error, refresh } = useWattfare();
  const { messages, sendMessage, status: chatStatus, error: chatError } = useChat({
    onFinish: () => { void refresh(); },
    onError: () => { void refresh(); },
  });
  const [input, setInput] = useState("Write a haiku about budgets.");

  const send = (event: FormEvent) => {
    event.preventDefault();
    if (input.trim()) void sendMessage({ text: input });
  };

  return (
    <>
      <section className="panel" aria-label="AI budget">
        <p>Acme Chat uses AI. Connect your own AI budget: approve a monthly cap once, revoke it any time.</p>
        {connected ? (
          <button type="button" onClick={() => void disconnect()}>Disconnect</button>
        ) : (
          <button type="button" className="primary" onClick={() => void connect()} disabled={status === "loading" || status === "connecting"}>
            Connect AI budget
          </button>
        )}
        <dl>
          <dt>Status</dt><dd id="status">{status}</dd>
          <dt>Monthly cap</dt><dd id="cap">{money(monthlyCapUsd)}</dd>
          <dt>Spent</dt><dd id="spent">{money(spentUsd)}</dd>
          <dt>Left</dt><dd id="remaining">{money(remainingUsd)}</dd>
        </dl>
        {error ? <p id="error" role="alert" data-code={error.code}>{error.code}: {error.message}</p> : null}
      </section>
      <section className="panel" aria-label="Chat">
        <ol id="messages">
          {messages.map((message) => (
            <li key={message.id} className={message.role}>
              {message.parts.map((part, i) => (part.type === "text" ? <span key={i}>{part.text}</span> : null))}
              {message.role === "assistant" && typeof (message.metadata as { costUsd?: unknown } | undefined)?.costUsd === "number" ? (
                <small className="cost">cost ${((message.metadata as { costUsd: number }).costUsd).toFixed(6)}</small>
              ) : null}
            </li>
          ))}
        </ol>
        {chatError ? <p id="chat-error" role="alert">{chatError.message}</p> : null}
        <form onSubmit={send}>
          <textarea id="prompt" rows={2} value={input} onChange={(e) => setInput(e.target.value)} />
          <button type="submit" disabled={chatStatus === "streaming" || chatStatus === "submitted"}>Send</button>
          <span id="chat-status">{chatStatus}</span>
        </form>
      </section>
    </>
  );
}
