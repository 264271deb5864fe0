// Step 3 of 3: the chat route, as with any AI SDK model: only `model` changed. The reply
// is billed to the signed-in user's own AI budget, within the cap they approved.
import { convertToModelMessages, streamText, type UIMessage } from "ai";
import { findWattfareError } from "wattfare/server";

import { currentUser } from "@/lib/user";
import { wattfare } from "@/lib/wattfare";

export const maxDuration = 60;

export async function POST(request: Request): Promise<Response> {
  const userId = await currentUser();
  if (userId === null) return Response.json({ error: "Sign in first" }, { status: 401 });
  const { messages }: { messages: UIMessage[] } = await request.json();

  const result = streamText({
    model: wattfare().user(userId).model("openai/gpt-4o-mini"),
    messages: await convertToModelMessages(messages),
  });

  return result.toUIMessageStreamResponse({
    // What the reply cost the user, from the gateway's usage report.
    messageMetadata: ({ part }) =>
      part.type === "finish-step" ? { costUsd: part.providerMetadata?.wattfare?.costUsd } : undefined,
    // The browser sees the gateway's code ("not_connected", "connection_revoked",
    // "spend_cap_reached", …) and can branch on it.
    onError: (error) => {
      const found = findWattfareError(error);
      return found ? `${found.code}: ${found.message}` : "The reply failed";
    },
  });
}
