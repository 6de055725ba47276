-- Hand claims back to their queues at the place they were taken from (the worker could not get
-- them started: the API or the database is down). Only claims still held by the given token go
-- back; a claim that lapsed and was taken by someone else is left alone.
-- KEYS: active, owners, then a queue key and a wake key per task (aligned with the pairs)
-- ARGV: token, then pairs (task_id, score)
local moved = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[1] then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZADD', KEYS[i + 1], 'NX', ARGV[i + 1], id)
    redis.call('LPUSH', KEYS[i + 2], '1')
    redis.call('LTRIM', KEYS[i + 2], 0, 9999)
    moved = moved + 1
  end
end
return moved
