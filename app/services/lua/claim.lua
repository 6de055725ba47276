-- Claim up to `count` ready tasks for one worker, across the queues of its capabilities,
-- always taking the lowest score (highest effective priority) first.
-- KEYS: active, owners, queue...
-- ARGV: worker_id, count, lease_ms
-- Each claimed id moves to `active` with a lease deadline and is owned by the worker, in the same
-- step that removes it from its queue: a worker that dies after this still leaves a lease behind.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now_ms + tonumber(ARGV[3])
local claimed = {}
for _ = 1, tonumber(ARGV[2]) do
  local best_key, best_score = nil, nil
  for k = 3, #KEYS do
    local head = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
    if head[2] and (best_score == nil or tonumber(head[2]) < best_score) then
      best_key, best_score = KEYS[k], tonumber(head[2])
    end
  end
  if best_key == nil then break end
  local id = redis.call('ZPOPMIN', best_key)[1]
  -- A stale duplicate of a task someone already holds is dropped, not claimed a second time.
  if not redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], deadline, id)
    redis.call('HSET', KEYS[2], id, ARGV[1])
    claimed[#claimed + 1] = id
  end
end
return claimed
