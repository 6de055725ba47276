-- Which ready tasks Redis holds nowhere: not in their type's queue, not leased, not delayed.
-- Read-only; reconciliation asks it of every pending task it reads, a chunk at a time.
-- KEYS: active, delayed, then the queue of each task type named in ARGV (same order)
-- ARGV: type_count, the task types (type_count of them), then one argument holding every task's
--       delayed member ('<task_type> <priority> <task_id>', as in the delayed set), separated
--       by newlines
-- Returns: the positions (from 1) in the list given of the tasks found nowhere, ascending.
-- Positions rather than ids: the same id asked under two types gets two answers.
-- The members travel as one argument: redis-py packs every argument in Python, and one to three
-- arguments per task held the caller's event loop for 3 to 4 ms per 1,000 tasks, where one joined
-- string costs about 1 ms. Ids and types hold no spaces or newlines (the API's name pattern), so
-- the split is unambiguous.
local types = tonumber(ARGV[1])
local queue_of = {}
for i = 1, types do
  queue_of[ARGV[1 + i]] = KEYS[2 + i]
end
local missing, position = {}, 0
for member in string.gmatch(ARGV[types + 2], '[^\n]+') do
  position = position + 1
  local task_type, id = string.match(member, '^(%S+) %S+ (%S+)$')
  -- Cheapest likely hit first: a pending task is usually waiting in its queue.
  if not redis.call('ZSCORE', queue_of[task_type], id)
      and not redis.call('ZSCORE', KEYS[1], id)
      and not redis.call('ZSCORE', KEYS[2], member) then
    missing[#missing + 1] = position
  end
end
return missing
