-- Shared helpers: sessionkit._scripts prepends to every script the
-- definitions of this file that the script uses (each one defined costs
-- every call a closure), so each script stays one static source on the
-- server. A definition is a top-level `local` line, the comment lines
-- right above it, and what follows up to the next one. A script that calls
-- helpers(ms, us16), handing them the time it read, gets its functions made
-- only when it calls it, as a table (create.lua: its common path needs
-- none); constants stay plain locals, and helpers() has copies of its own.
--
-- Stored session value (a Redis string, offsets 1-based):
--   [1]       layout version, "\1"; a value of another version is never
--             read as a session nor rewritten (a later layout is recognised,
--             never misread)
--   [2..17]   creation time, microseconds since epoch, 16 digits (it orders
--             a user's sessions, so it must tell apart two in one millisecond)
--   [18..30]  absolute expiry, ms since epoch, 13 digits
--   [31..43]  last-active time, ms, 13 digits (rewritten in place by SETRANGE)
--   [44..65]  the user's digest, 22 characters
--   then the opaque JSON body (user id, user agent, data).
-- Fixed widths let scripts read and touch a session without decoding it.
--
-- Per user, three more keys, each holding the same session ids:
--   index  sorted set scored by expiry: what is live (pruned by score)
--   order  sorted set scored by creation time: whom a create at the cap
--          evicts (the oldest), found without reading every session
--   groups hash, session id -> the session's access groups: "\0", then
--          each group followed by "\0" (groups never hold NUL), so one plain
--          search tells whether a session has one.
--          A group change reads and writes this one hash, in batches,
--          whatever the number of sessions: it never touches their values.
-- Every script that adds or removes a session changes all three.

local LAYOUT_BYTE = 1
local LAYOUT = string.char(LAYOUT_BYTE)
local EXPIRES_AT, LAST_ACTIVE_AT = 18, 31
local DIGEST_FROM, DIGEST_TO = 44, 65
-- Items per MGET / DEL / ZREM / HSET call. Few: a batch as large as a
-- user's sessions (a table, then unpacked onto Lua's stack, of as many
-- items) cost a change to 1,000 sessions a tenth to a sixth of its server
-- time on a busy server built with the C library's malloc, which serves
-- large blocks far more slowly than small ones; on jemalloc, and on a
-- fresh server, the size made no difference beyond noise. The best of 16,
-- 32, 50, 100 and 1,000 measured. Even, so the field-value pairs of a
-- batched HSET are never split.
local BATCH = 32

-- Server time, read once per script run (every step of one change sees
-- the same time): ms since epoch, and µs as the 16 digits a value stores,
-- built from TIME's own digits. Numbers are read from strings by arithmetic
-- (`s + 0`), never by tonumber, which parses a string twice in Lua 5.1, and
-- written with string.format (sprintf) only where no digits are at hand:
-- the two are the dearest steps of the hot scripts.
local clock_ms, clock_us16
local function clock()
  if not clock_ms then
    local t = redis.call('TIME')
    clock_ms = t[1] * 1000 + math.floor(t[2] / 1000)
    clock_us16 = t[1] .. string.sub('00000' .. t[2], -6)
  end
  return clock_ms, clock_us16
end

local function now_ms()
  return (clock())
end

local function ms13(n)
  return string.format('%013d', n)
end

local function ours(v)
  return string.byte(v) == LAYOUT_BYTE
end

local function owner(v)
  return string.sub(v, DIGEST_FROM, DIGEST_TO)
end

local NO_GROUPS = '\0'

-- How many groups an entry holds (one NUL each, and the leading one).
local function count_groups(entry)
  local _, nuls = string.gsub(entry, '%z', '')
  return nuls - 1
end

-- Calls a command on one key with many arguments, BATCH at a time; the sum
-- of the replies.
local function batched(command, key, items)
  local total = 0
  for i = 1, #items, BATCH do
    total = total + redis.call(command, key, unpack(items, i, math.min(i + BATCH - 1, #items)))
  end
  return total
end

-- Takes sessions out of the user's index, order and groups.
local function unindex(index, order, groups, ids)
  batched('ZREM', index, ids)
  batched('ZREM', order, ids)
  batched('HDEL', groups, ids)
end

-- Drops the sessions whose expiry has passed (the index's score).
local function prune(index, order, groups, now)
  local dead = redis.call('ZRANGEBYSCORE', index, '-inf', now)
  if #dead > 0 then
    unindex(index, order, groups, dead)
  end
end

-- The per-user keys live exactly as long as the user's longest-lived session.
local function refresh_ttl(index, order, groups)
  local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIREAT', index, top[2])
    redis.call('PEXPIREAT', order, top[2])
    redis.call('PEXPIREAT', groups, top[2])
  end
end

-- The session keys of ids[from..to] (every `step`-th item from `from`).
local function session_keys(key_prefix, ids, from, to, step)
  local out, s, n = {}, key_prefix .. 's:', 0
  for i = from, to, step do
    n = n + 1
    out[n] = s .. ids[i]
  end
  return out
end

-- Deletes the sessions `ids` name (their keys built from the user's key
-- prefix), BATCH at a time, in one small table reused (see BATCH): the
-- number deleted. Not `session_keys` per batch: a new table for each batch
-- cost a delete of 1,000 sessions 3 % more server time.
local function delete_sessions(key_prefix, ids)
  local deleted, keys, s = 0, {}, key_prefix .. 's:'
  for i = 1, #ids, BATCH do
    local n = 0
    for j = i, math.min(i + BATCH - 1, #ids) do
      n = n + 1
      keys[n] = s .. ids[j]
    end
    deleted = deleted + redis.call('DEL', unpack(keys, 1, n))
  end
  return deleted
end

-- Appends one event to the stream of the user's bucket (in the user's hash
-- slot), inside the script that makes the change: the event exists if and
-- only if the change does. Every entry has the same four fields, so the
-- stream stores their names once per node:
--   type      created | deleted | all_deleted | evicted | groups_added |
--             groups_removed
--   user      the user id
--   sessions  the ids of the sessions changed, space-separated (never tokens)
--   groups    the access groups concerned, a JSON array ('[]' if none)
-- An entry id is "<ms>-<n>": the server time and the entry's number in its
-- stream (1, 2, 3, ... with no gaps), so a consumer group's position tells
-- exactly how many entries came after it, trimmed or not, on every server.
-- The number comes from a counter beside the stream ("<stream>:n", a
-- string in the same slot): one INCRBY instead of reading the stream's last
-- entry back. The stream is the truth, though: whenever the counter cannot
-- be trusted (it is new, i.e. the bucket's first event or a counter lost;
-- the stream is gone, so XADD NOMKSTREAM writes nothing; or the clock went
-- back, so the id would not be the stream's largest), the numbering is
-- taken again from the stream's last id and the counter set from it.
-- One entry is at most EVENT_BYTES: a change to more sessions than fit
-- writes several entries of the same type, in order, that together name
-- each session once. maxlen '0' means events are off; a change that touched
-- no session writes nothing.
local EVENT_BYTES = 65536
local ENTRY_OVERHEAD = 64  -- field names, their lengths, the type

-- The stream's last entry id as {ms, n}; {0, 0} for a stream never written.
local function last_event_id(stream)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  local id = last and last[1]
  if not id then
    if redis.call('EXISTS', stream) == 0 then
      return 0, 0
    end
    local info = redis.call('XINFO', 'STREAM', stream)  -- emptied by hand
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        id = info[i + 1]
      end
    end
  end
  local dash = string.find(id, '-', 1, true)
  return string.sub(id, 1, dash - 1) + 0, string.sub(id, dash + 1) + 0
end

-- Appends the first entry of a change numbered from the stream itself (the
-- counter could not be trusted: see above), at `ms` or after the stream's
-- last entry if that is later, and sets the counter to match the change's
-- `entries`. Returns the entry's ms and number.
local function append_renumbered(stream, maxlen, ms, entries, kind, user, sessions, groups_json)
  local last_ms, last_n = last_event_id(stream)
  ms = math.max(ms, last_ms)
  redis.call('SET', stream .. ':n', last_n + entries)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, string.format('%d-%d', ms, last_n + 1),
    'type', kind, 'user', user, 'sessions', sessions, 'groups', groups_json)
  return ms, last_n + 1
end

local function emit(stream, maxlen, kind, user, ids, groups_json)
  if maxlen == '0' or #ids == 0 then
    return
  end
  local room = EVENT_BYTES - ENTRY_OVERHEAD - #kind - #user - #groups_json
  local per_entry = math.max(1, math.floor((room + 1) / (#ids[1] + 1)))
  local entries = math.ceil(#ids / per_entry)
  local ms, n = now_ms(), redis.call('INCRBY', stream .. ':n', entries) - entries
  for from = 1, #ids, per_entry do
    n = n + 1
    local sessions = table.concat(ids, ' ', from, math.min(from + per_entry - 1, #ids))
    if from > 1 then
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, string.format('%d-%d', ms, n),
        'type', kind, 'user', user, 'sessions', sessions, 'groups', groups_json)
    elseif n == 1 or type(redis.pcall('XADD', stream, 'NOMKSTREAM', 'MAXLEN', '~', maxlen,
        string.format('%d-%d', ms, n), 'type', kind, 'user', user, 'sessions', sessions,
        'groups', groups_json)) ~= 'string' then
      -- a new counter, or its number refused: number from the stream itself
      ms, n = append_renumbered(stream, maxlen, ms, entries, kind, user, sessions, groups_json)
    end
  end
end
