-- Drop leases after the database recorded the outcome (or refused a stale claim).
-- KEYS: active, owners
-- ARGV: worker_id ('' = whoever holds it), task_id...
-- Only the owner's lease goes: a late message from a worker whose task was since reassigned must
-- not free the new owner's lease.
local removed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local owner = redis.call('HGET', KEYS[2], id)
  if ARGV[1] == '' or owner == false or owner == ARGV[1] then
    removed = removed + redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  end
end
return removed
