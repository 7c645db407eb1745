#!lua flags=allow-cross-slot-keys
-- Reads many event streams of one cluster node in one call, so a consumer
-- costs one round trip per node instead of one per slot. The only script
-- that names its keys in ARGV (it declares none): the streams are the
-- buckets' streams this node holds, each in its own slot, which only a
-- script flagged allow-cross-slot-keys may touch in one call. It never
-- blocks; the caller polls.
-- ARGV[1] consumer group ('' to read without a group)   ARGV[2] consumer
-- ARGV[3] most entries per stream   ARGV[4..] stream name, id, ...
-- Returns {entries, skipped}: entries as one XREADGROUP (or XREAD) over all
-- those streams returns them, {{stream, {{id, {field, value, ...}}, ...}}, ...},
-- streams with nothing left out; skipped, the streams this node could not
-- read (their slot is moving to another node: the caller asks again later).
local group, consumer, count = ARGV[1], ARGV[2], ARGV[3]
local out, skipped = {}, {}
for i = 4, #ARGV, 2 do
  local r
  if group ~= '' then
    r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
      'STREAMS', ARGV[i], ARGV[i + 1])
  else
    r = redis.pcall('XREAD', 'COUNT', count, 'STREAMS', ARGV[i], ARGV[i + 1])
  end
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 8) == 'NOGROUP ' then
      return redis.error_reply(r.err)
    end
    skipped[#skipped + 1] = ARGV[i]
  elseif r and #r[1][2] > 0 then
    out[#out + 1] = r[1]
  end
end
return {out, skipped}
