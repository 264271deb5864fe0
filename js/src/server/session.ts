// Session tokens minted locally: the same 10-minute EdDSA JWTs as POST /v1/sessions,
// signed with WebCrypto's Ed25519 (Node 20+, Deno, Bun, Vercel Edge and Cloudflare
// Workers all have it), so the package needs no JWT library.
//
// A secret key is "sk_test_"/"sk_live_" + the 32-byte Ed25519 seed in unpadded base64url;
// its publishable key is "pk_<mode>_" + the public key, which is the token's `kid`/`iss`.

export const AUDIENCE = "wattfare";
export const MAX_LIFETIME_S = 600;
const SECRET_KEY_RE = /^sk_(test|live)_([A-Za-z0-9_-]{43})$/;
// PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410): a fixed 16-byte prefix.
const PKCS8_PREFIX = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/** What `createSession` returns: the JSON of `POST /v1/sessions`. */
export interface Session {
  token: string;
  /** Unix seconds. */
  expires_at: number;
  user_id: string;
}

export interface RequestLimit {
  /** The monthly cap, in USD, the app asks the user to approve. */
  monthlyUsd: number;
}

export interface SigningKey {
  mode: "test" | "live";
  publishableKey: string;
  privateKey: CryptoKey;
}

export function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function fromBase64url(text: string): Uint8Array {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function utf8Base64url(value: unknown): string {
  return base64url(new TextEncoder().encode(JSON.stringify(value)));
}

// Python's str.isprintable() (the gateway's rule): no control, format, line or paragraph
// separator, private-use, surrogate or unassigned characters, and no space but " ".
const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cn}\p{Co}\p{Cs}\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]/u;

/** True for 1-256 printable characters, as the gateway requires of a user id. */
export function validUserId(userId: unknown): userId is string {
  return typeof userId === "string" && userId.length > 0 && [...userId].length <= 256
    && !NOT_PRINTABLE.test(userId);
}

/** Parses a secret key into the signing key and its publishable key. */
export async function signingKey(secretKey: string): Promise<SigningKey> {
  const match = SECRET_KEY_RE.exec(secretKey);
  if (match === null) {
    throw new TypeError("Wattfare: secretKey must be an sk_test_… or sk_live_… key");
  }
  const seed = fromBase64url(match[2] ?? "");
  if (seed.length !== 32) throw new TypeError("Wattfare: a secret key holds a 32-byte seed");
  const der = new Uint8Array([...PKCS8_PREFIX, ...seed]);
  const extractable = await crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, true, ["sign"]);
  // The JWK export of a private key carries its public half, `x`.
  const jwk = await crypto.subtle.exportKey("jwk", extractable);
  if (typeof jwk.x !== "string") throw new TypeError("Wattfare: could not derive the public key");
  const privateKey = await crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
  const mode = match[1] === "live" ? "live" : "test";
  return { mode, publishableKey: `pk_${mode}_${jwk.x}`, privateKey };
}

/** Signs a session token for `userId`. */
export async function mintSession(
  key: SigningKey,
  userId: string,
  options: { requestLimit?: RequestLimit | undefined; ttlSeconds?: number | undefined; now?: number | undefined } = {},
): Promise<Session> {
  if (!validUserId(userId)) {
    throw new TypeError("Wattfare: userId must be 1-256 printable characters");
  }
  const ttl = options.ttlSeconds ?? MAX_LIFETIME_S;
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_LIFETIME_S) {
    throw new RangeError(`Wattfare: ttlSeconds must be an integer between 1 and ${MAX_LIFETIME_S}`);
  }
  const issued = Math.floor((options.now ?? Date.now()) / 1000);
  const claims: Record<string, unknown> = {
    iss: key.publishableKey,
    sub: userId,
    aud: AUDIENCE,
    iat: issued,
    exp: issued + ttl,
    jti: base64url(crypto.getRandomValues(new Uint8Array(12))),
  };
  const limit = options.requestLimit;
  if (limit !== undefined) {
    const usd = limit.monthlyUsd;
    if (typeof usd !== "number" || !Number.isFinite(usd) || usd < 0 || usd > 1e9) {
      throw new RangeError("Wattfare: requestLimit.monthlyUsd must be a number >= 0");
    }
    claims.lim = { monthly_usd: usd };
  }
  const input = `${utf8Base64url({ alg: "EdDSA", typ: "JWT", kid: key.publishableKey })}.${utf8Base64url(claims)}`;
  const signature = await crypto.subtle.sign({ name: "Ed25519" }, key.privateKey, new TextEncoder().encode(input));
  return { token: `${input}.${base64url(new Uint8Array(signature))}`, expires_at: issued + ttl, user_id: userId };
}
