-- Lists a user's live sessions, pruning the index as it goes; sessions
-- whose key is gone (deleted behind sessionkit's back) leave the user's
-- keys, and values of another layout are left alone and not returned.
-- KEYS[1] the user's index   KEYS[2] the user's order   KEYS[3] the user's groups
-- KEYS[4] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the session ids, in the same slot.
-- Returns two strings per batch of up to BATCH sessions (in no particular
-- order): their values joined by NUL (a value holds none), and each one's
-- id (24 characters), a NUL and its groups entry, joined by NUL (an entry
-- starts with NUL and holds no empty group, so it ends where two NULs
-- meet). A few long strings instead of three per session: the reply is
-- built in C, and the common batch is never taken apart in Lua.
local index, order, groups_key, key_prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
prune(index, order, groups_key, now_ms())
-- After pruning, the groups hash holds exactly the user's live sessions:
-- {id, entry, id, entry, ...}.
local flat = redis.call('HGETALL', groups_key)
local out, stale = {}, {}
for i = 1, #flat, 2 * BATCH do
  local last = math.min(i + 2 * BATCH - 1, #flat)
  local values = redis.call('MGET', unpack(session_keys(key_prefix, flat, i, last, 2)))
  local clean = true
  for j = 1, #values do
    local v = values[j]
    if not v or string.byte(v) ~= LAYOUT_BYTE then
      clean = false
      break
    end
  end
  if clean then
    out[#out + 1] = table.concat(values, '\0')
    out[#out + 1] = table.concat(flat, '\0', i, last)
  else
    local kept, pairs_, n = {}, {}, 0
    for j = 1, #values do
      local v, at = values[j], i + 2 * j - 2
      if v and string.byte(v) == LAYOUT_BYTE then
        n = n + 1
        kept[n] = v
        pairs_[2 * n - 1], pairs_[2 * n] = flat[at], flat[at + 1]
      elseif not v then
        stale[#stale + 1] = flat[at]
      end
    end
    if n > 0 then
      out[#out + 1] = table.concat(kept, '\0')
      out[#out + 1] = table.concat(pairs_, '\0')
    end
  end
end
if #stale > 0 then
  unindex(index, order, groups_key, stale)
  refresh_ttl(index, order, groups_key)
end
return out
