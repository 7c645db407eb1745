-- get.lua's commands with none of its logic (the floor a resolve is
-- measured against, bench/floor.py): the same GET, HGET and TIME on the
-- same keys, and the same one-string reply.
local v = redis.call('GET', KEYS[1])
local g = redis.call('HGET', KEYS[2] .. 'g:' .. string.sub(v, 44, 65), ARGV[2])
redis.call('TIME')
return v .. g
