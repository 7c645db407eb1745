// Drives sessionkit's Altogic-compatible endpoints with the real `altogic`
// client: list sessions, sign out another device by the token the listing
// gave, sign out all but the current one, sign out all; then, with a second
// session, signOut("") (the client's "this session"). Prints one JSON object.
// Usage: node altogic_client.mjs <base url> <session token> <another token>
import { createClient } from "altogic";

const [baseUrl, token, spare] = process.argv.slice(2);
const client = createClient(baseUrl, "client-key-unused");
client.auth.setSession({ token });

const out = {};
const first = await client.auth.getAllSessions();
out.listErrors = first.errors;
out.listed = (first.sessions || []).length;
out.currentRecognised = (first.sessions || []).filter((s) => s.token === token).length;
// The shape the client's Session type declares, plus id, expiresAt, lastActiveAt.
out.fields = (first.sessions || []).map((s) => Object.keys(s).sort());
const types = (o) => Object.fromEntries(
  Object.entries(o).map(([k, v]) => [k, v && typeof v === "object" ? types(v) : typeof v]));
out.userAgentTypes = first.sessions && first.sessions[0] ? types(first.sessions[0].userAgent) : null;
const other = (first.sessions || []).find((s) => s.token !== token);
out.otherHandle = other ? other.token : null;
out.signOutOther = (await client.auth.signOut(other.token)).errors;
out.afterSignOut = ((await client.auth.getAllSessions()).sessions || []).length;
out.signOutAllExcept = (await client.auth.signOutAllExceptCurrent()).errors;
const rest = await client.auth.getAllSessions();
out.afterAllExcept = (rest.sessions || []).map((s) => s.token === token);
out.signOutAll = (await client.auth.signOutAll()).errors;
client.auth.setSession({ token });
const gone = await client.auth.getAllSessions();
out.afterAll = gone.errors ? gone.errors.items.map((e) => e.code) : gone.sessions;
client.auth.setSession({ token: spare });
out.emptySignOut = (await client.auth.signOut("")).errors;
client.auth.setSession({ token: spare });
const spareAfter = await client.auth.getAllSessions();
out.afterEmpty = spareAfter.errors ? spareAfter.errors.items.map((e) => e.code) : spareAfter.sessions;
console.log(JSON.stringify(out));
