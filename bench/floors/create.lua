-- create.lua's commands below its cap with none of its logic (the floor a
-- create is measured against, bench/floor.py): the same TIME, SET NX GET,
-- ZCARD, ZADDs, HSET, PEXPIREATs (each setting the expiry, as a create's
-- do), INCRBY and XADD (its id numbered from the counter) on the same keys
-- and arguments, a value of the same size, and the same one-string reply.
local t = redis.call('TIME')
local at = tostring(t[1] * 1000 + ARGV[7])
local v = '\1' .. t[1] .. string.sub('00000' .. t[2], -6) .. at .. at .. ARGV[2] .. ARGV[3]
redis.call('SET', KEYS[1], v, 'NX', 'PXAT', at, 'GET')
redis.call('ZCARD', KEYS[2])
redis.call('ZADD', KEYS[2], at, ARGV[1])
redis.call('ZADD', KEYS[3], at, ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
redis.call('PEXPIREAT', KEYS[2], at)
redis.call('PEXPIREAT', KEYS[3], at)
redis.call('PEXPIREAT', KEYS[4], at)
if ARGV[10] ~= '0' then  -- events on
  local n = redis.call('INCRBY', KEYS[6] .. ':n', 1)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], (t[1] * 1000 + math.floor(t[2] / 1000)) .. '-' .. n,
    'type', 'created', 'user', ARGV[4], 'sessions', ARGV[1], 'groups', ARGV[5])
end
return v .. ARGV[6]
