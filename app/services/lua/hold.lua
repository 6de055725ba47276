-- Give the worker whose start the database just confirmed a lease on each task, whatever Redis
-- did meanwhile: its claim may have lapsed and been requeued (slow start call). Any queued copy
-- is removed, so the database's running attempt and Redis's lease always go together.
-- KEYS: active, owners, then one queue key per task (aligned with the ids)
-- ARGV: worker_id, lease_ms, task_id...
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
for i = 3, #ARGV do
  local id = ARGV[i]
  redis.call('ZREM', KEYS[i], id)
  redis.call('ZADD', KEYS[1], deadline, id)
  redis.call('HSET', KEYS[2], id, ARGV[1])
end
return #ARGV - 2
