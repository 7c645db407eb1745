-- Shared helpers: sessionkit.scripts prepends this file to every script
-- before loading it, so each script stays one static source on the server.
--
-- Stored session value (a Redis string, offsets 1-based):
--   [1..16]   creation time, microseconds since epoch, 16 digits (it orders
--             a user's sessions, so it must tell apart two in one millisecond)
--   [17..29]  absolute expiry, ms since epoch, 13 digits
--   [30..42]  last-active time, ms, 13 digits (rewritten in place by SETRANGE)
--   [43..64]  the user's digest, 22 characters
--   then "<n>:" and n bytes of opaque JSON (user id, user agent, data),
--   then the access groups, each "<n>:" and n bytes.
-- Fixed widths let scripts read and touch a session without decoding it.

local HEADER = 64
local EXPIRES_AT, LAST_ACTIVE_AT = 17, 30
local DIGEST_FROM, DIGEST_TO = 43, 64

-- Server time as {ms, µs}.
local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us
end

local function now_ms()
  return (clock())
end

local function ms13(n)
  return string.format('%013d', n)
end

local function field_ms(v, from)
  return tonumber(string.sub(v, from, from + 12))
end

local function created_us(v)
  return tonumber(string.sub(v, 1, 16))
end

local function owner(v)
  return string.sub(v, DIGEST_FROM, DIGEST_TO)
end

-- Splits a value into its fixed part (header and body) and its groups.
local function split_groups(v)
  local colon = string.find(v, ':', HEADER + 1, true)
  local body_len = tonumber(string.sub(v, HEADER + 1, colon - 1))
  local groups_from = colon + body_len + 1
  local groups = {}
  local i = groups_from
  while i <= #v do
    local c = string.find(v, ':', i, true)
    local n = tonumber(string.sub(v, i, c - 1))
    groups[#groups + 1] = string.sub(v, c + 1, c + n)
    i = c + n + 1
  end
  return string.sub(v, 1, groups_from - 1), groups
end

local function join_groups(groups)
  local parts = {}
  for i, g in ipairs(groups) do
    parts[i] = #g .. ':' .. g
  end
  return table.concat(parts)
end

-- Drops index members whose session has expired (their score is the
-- session's expiry).
local function prune(index, now)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
end

-- The index lives exactly as long as its longest-lived session.
local function refresh_index_ttl(index)
  local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIREAT', index, top[2])
  end
end

-- Live members of the index, with their values; members whose key is
-- gone (deleted behind our back) are removed from the index.
local function live_sessions(index, key_prefix)
  local members = redis.call('ZRANGE', index, 0, -1)
  local ids, values, stale = {}, {}, false
  for _, id in ipairs(members) do
    local v = redis.call('GET', key_prefix .. 's:' .. id)
    if v then
      ids[#ids + 1] = id
      values[#values + 1] = v
    else
      redis.call('ZREM', index, id)
      stale = true
    end
  end
  if stale then
    refresh_index_ttl(index)
  end
  return ids, values
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
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function emit(stream, maxlen, kind, user, ids, groups_json)
  if maxlen == '0' or #ids == 0 then
    return
  end
  local last_ms, n = last_event_id(stream)
  local ms = math.max(now_ms(), last_ms)
  local room = EVENT_BYTES - ENTRY_OVERHEAD - #kind - #user - #groups_json
  local per_entry = math.max(1, math.floor((room + 1) / (#ids[1] + 1)))
  for from = 1, #ids, per_entry do
    n = n + 1
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, string.format('%d-%d', ms, n),
      'type', kind, 'user', user,
      'sessions', table.concat(ids, ' ', from, math.min(from + per_entry - 1, #ids)),
      'groups', groups_json)
  end
end
