-- Claim up to `count` ready tasks for one worker, across the queues of its capabilities,
-- always taking the lowest score (highest effective priority) first.
-- KEYS: active, owners, queue...
-- ARGV: claim_token ('<worker_id>#0'), count, lease_ms
-- Each claimed id moves to `active` with a lease deadline, owned by the claim token, in the same
-- step that removes it from its queue: a worker that dies after this still leaves a lease behind.
-- Returns a flat list of (task_id, score, queue key) triples: a claim that cannot be started is
-- handed back to the very same place in its queue (unclaim.lua).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now_ms + tonumber(ARGV[3])
local claimed = {}
for _ = 1, tonumber(ARGV[2]) do
  -- The score travels as Redis wrote it: a number round trip could move the task in its queue.
  local best_key, best_score, best = nil, nil, nil
  for k = 3, #KEYS do
    local head = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
    if head[2] and (best == nil or tonumber(head[2]) < best) then
      best_key, best_score, best = KEYS[k], head[2], tonumber(head[2])
    end
  end
  if best_key == nil then break end
  local id = redis.call('ZPOPMIN', best_key)[1]
  -- A stale duplicate of a task someone already holds is dropped, not claimed a second time.
  if not redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], deadline, id)
    redis.call('HSET', KEYS[2], id, ARGV[1])
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = best_score
    claimed[#claimed + 1] = best_key
  end
end
return claimed
