// The sample app's page script: what a page integrating Wattfare looks like.
// Its settings come from the page (data-* attributes on <body>); it imports the
// browser SDK from the gateway, and runs under the page's Content-Security-Policy.

const page = document.body.dataset;
const { Wattfare } = await import(`${page.gateway}/sdk/wattfare.js`);

const user = new URLSearchParams(location.search).get("user") || "demo-user";
let cached = null;
const wattfare = new Wattfare({
  publishableKey: page.publishableKey,
  baseUrl: page.gateway,
  // The app's backend mints a 10-minute token; reuse it for a few minutes.
  session: async () => {
    if (cached && cached.expires_at - Date.now() / 1000 > 120) return cached.token;
    const response = await fetch(`/session?user=${encodeURIComponent(user)}`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    cached = await response.json();
    return cached.token;
  },
});
window.wattfare = wattfare;
const $ = (id) => document.getElementById(id);

// What a person reads, by error code (the SDK's own and the API's).
const MESSAGES = {
  spend_cap_reached: `This month's AI budget for ${page.appName} is used up. Raise its cap on your Wattfare dashboard, or wait for next month.`,
  connection_revoked: `${page.appName} no longer has access to your AI budget (it was revoked). Connect again to keep using AI here.`,
  not_connected: "Connect your AI budget to use AI here.",
  funding_unavailable: "Your OpenRouter account cannot pay for this right now (not connected, out of credit, or its key was revoked). Check it on your Wattfare dashboard.",
  denied: "You did not approve a budget, so nothing was connected.",
  closed: "The Wattfare window was closed before you decided.",
  expired: "The Wattfare window waited too long. Click Connect AI budget to try again.",
  popup_blocked: "Your browser blocked the Wattfare window. Allow pop-ups for this site and try again.",
  network_error: "Could not reach Wattfare. Check your connection and try again.",
  invalid_session: "Your session with this app has expired. Reload the page.",
  session_expired: "Your session with this app has expired. Reload the page.",
  rate_limited: "The AI service is busy right now. Try again in a moment.",
  upstream_error: "The AI service failed to answer. Try again in a moment.",
  upstream_timeout: "The AI service took too long to answer. Try again in a moment.",
  model_not_found: "This app asked for an AI model that is not available.",
  origin_not_allowed: "This page's address is not registered for this app.",
};
const STATUS = {
  connected: "Connected",
  not_connected: "Not connected",
  revoked: "Revoked on your Wattfare dashboard",
};

/** Money as the gateway's pages show it: cents from a cent up, more digits below. */
function money(usd) {
  if (usd == null) return "–";
  const value = Number(usd);
  if (value === 0 || Math.abs(value) >= 0.01) return `$${value.toFixed(2)}`;
  return `$${value.toFixed(9).replace(/0+$/, "")}`;
}

function showError(error) {
  const code = (error && error.code != null) ? String(error.code) : "error";
  $("error").dataset.code = code;
  $("error").textContent = MESSAGES[code] || "Something went wrong. Try again.";
}
function clearError() {
  $("error").dataset.code = "";
  $("error").textContent = "";
}

function show(connection) {
  const status = connection.status;
  $("status").dataset.status = status;
  $("status").textContent = STATUS[status] || status;
  $("cap").textContent = money(connection.monthly_cap_usd);
  $("spent").textContent = money(connection.spent_usd);
  $("left").textContent = money(connection.remaining_usd);
  // Offer what makes sense now: connect unless connected, disconnect only if connected.
  $("connect").hidden = status === "connected";
  $("disconnect").hidden = status !== "connected";
}
const refresh = () => wattfare.status().then(show, () => {});

$("connect").addEventListener("click", () => {
  clearError();
  $("activity").textContent = "Waiting for your approval…";
  wattfare.connect().then(show, showError).finally(() => { $("activity").textContent = ""; });
});
$("disconnect").addEventListener("click", () => {
  clearError();
  wattfare.disconnect().then(show, showError);
});

/** Reads an SSE response to its end; the first error event it carried, or null. */
async function readStream(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let failed = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        let chunk;
        try { chunk = JSON.parse(data); } catch { continue; }
        if (chunk.error && !failed) failed = chunk.error;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) $("output").textContent += delta.content;
        if (chunk.usage) $("cost").textContent = `Cost of this answer: ${money(chunk.usage.cost || 0)}`;
      }
    }
  }
  if (failed && typeof failed.code === "number") {
    // The upstream's own error, passed through mid-stream (its code is an HTTP status).
    failed = { code: failed.code === 429 ? "rate_limited" : failed.code === 408 ? "upstream_timeout" : "upstream_error" };
  }
  return failed;
}

$("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("output").textContent = "";
  $("cost").textContent = "";
  clearError();
  $("send").disabled = true;
  $("activity").textContent = "Writing…";
  let failed = null;
  try {
    const response = await wattfare.fetch("/v1/chat/completions", {
      method: "POST",
      body: JSON.stringify({
        model: "openai/gpt-4o-mini", stream: true, stream_options: { include_usage: true },
        messages: [{ role: "user", content: $("prompt").value }],
      }),
    });
    if (response.ok) {
      failed = await readStream(response);
    } else {
      const body = await response.json().catch(() => null);
      failed = (body && body.error) || { code: "error" };
    }
  } catch (error) {
    failed = error;
  } finally {
    // Whatever happened, the page stops saying it is writing.
    $("send").disabled = false;
    $("activity").textContent = failed ? "" : "Done.";
    if (failed) showError(failed);
    await refresh();
  }
});

// Notice a revocation made on the dashboard without waiting for the next request.
wattfare.status().then(show, (error) => {
  showError(error);
  $("status").dataset.status = "unknown";
  $("status").textContent = "Unknown";
  $("connect").hidden = false;  // the status could not be read: connecting may still work
});
setInterval(refresh, 2000);
