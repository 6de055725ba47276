-- Park tasks until a time (retry backoff, scheduled start); drop any lease they held.
-- KEYS: active, owners, delayed
-- ARGV: pairs (member, ready_at_ms) where member = '<task_type> <priority> <task_id>'
for i = 1, #ARGV, 2 do
  local member = ARGV[i]
  local id = string.match(member, '^%S+ %S+ (%S+)$')
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZADD', KEYS[3], tonumber(ARGV[i + 1]), member)
end
return #ARGV / 2
