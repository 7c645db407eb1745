// Drives sessionkit's Altogic-compatible endpoints with the real `altogic`
// client: list sessions, sign out another device by the token the listing
// gave, sign out all but the current one, sign out all. Prints one JSON object.
// Usage: node altogic_client.mjs <base url> <session token>
import { createClient } from "altogic";

const [baseUrl, token] = process.argv.slice(2);
const client = createClient(baseUrl, "client-key-unused");
client.auth.setSession({ token });

const out = {};
const first = await client.auth.getAllSessions();
out.listErrors = first.errors;
out.listed = (first.sessions || []).length;
out.currentRecognised = (first.sessions || []).filter((s) => s.token === token).length;
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
console.log(JSON.stringify(out));
