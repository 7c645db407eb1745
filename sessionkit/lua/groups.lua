-- Adds or removes access groups on every live session of a user, all in
-- one atomic step: no reader sees some sessions changed and others not. An
-- add that would give any session more than the per-session cap of groups
-- changes nothing at all. Reads and writes only the user's groups hash, in
-- batches: the session values are not touched.
-- KEYS[1] the user's index   KEYS[2] the user's order   KEYS[3] the user's groups
-- KEYS[4] the bucket's event stream
-- ARGV[1] 'add' or 'remove'   ARGV[2] most groups on one session
-- ARGV[3] event stream cap (0: no events)   ARGV[4] user id
-- ARGV[5] the access groups as a JSON array
-- ARGV[6..] access groups (distinct)
-- Returns {number of sessions changed}, or {-1} if the add was refused.
local FIRST = 6
local index, order, groups_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local adding = ARGV[1] == 'add'
local most = tonumber(ARGV[2])
local wanted, needles = {}, {}
for i = FIRST, #ARGV do
  wanted[#wanted + 1] = ARGV[i]
  needles[#needles + 1] = '\0' .. ARGV[i] .. '\0'
end

prune(index, order, groups_key, now_ms())
local ids = redis.call('ZRANGE', index, 0, -1)
-- First every new entry, then (if none is over the cap) every write.
local changed, writes = {}, {}
for i = 1, #ids, BATCH do
  local entries = redis.call('HMGET', groups_key, unpack(ids, i, math.min(i + BATCH - 1, #ids)))
  for j = 1, #entries do
    local e = entries[j] or '000\0'
    local n = tonumber(string.sub(e, 1, 3))
    local was = n
    if adding then
      local more = {}
      for k, needle in ipairs(needles) do
        if not string.find(e, needle, 4, true) then
          more[#more + 1] = wanted[k]
        end
      end
      if #more > 0 then
        n = n + #more
        if n > most then
          return {-1}
        end
        e = e .. table.concat(more, '\0') .. '\0'
      end
    else
      for k, needle in ipairs(needles) do
        local at = string.find(e, needle, 4, true)
        if at then
          e = string.sub(e, 1, at) .. string.sub(e, at + #wanted[k] + 2)
          n = n - 1
        end
      end
    end
    if n ~= was then
      local id = ids[i + j - 1]
      changed[#changed + 1] = id
      writes[#writes + 1] = id
      writes[#writes + 1] = string.format('%03d', n) .. string.sub(e, 4)
    end
  end
end
for i = 1, #writes, 2 * BATCH do
  redis.call('HSET', groups_key, unpack(writes, i, math.min(i + 2 * BATCH - 1, #writes)))
end
emit(stream, ARGV[3], adding and 'groups_added' or 'groups_removed', ARGV[4], changed, ARGV[5])
return {#changed}
