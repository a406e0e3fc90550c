"""The queue's Lua scripts: every state change of a job is one atomic script, run by EVALSHA.

Every script gets the same KEYS (all of one namespace, see `job_queue.QueueKeys.all`) and the same first
ARGV (the common configuration below); its own arguments follow from ARGV[6]. The job hashes
`{ns}:job:{id}` are addressed from inside the scripts (their prefix is ARGV[1]): on Redis Cluster, give the
namespace a hash tag (e.g. "{cm:q}") so that every key lands in one slot.

Time is Redis's own clock (`TIME`), so replicas with skewed clocks agree on expiries and ages.
Numbers are written with `%.0f`: Lua's `tostring` keeps 14 significant digits only, and a ready-set score
(up to 2.0e15) needs 16.
"""

from __future__ import annotations

PRELUDE = r"""
local READY, LEASES, DEADLINES, WAKE, PAUSED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local WAITS, OUTCOMES, DEAD, FIFO, FLEET = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local JOB_PREFIX = ARGV[1]
local FINISHED_TTL = tonumber(ARGV[2])
local MAX_ATTEMPTS = tonumber(ARGV[3])
local DEAD_MAX = ARGV[4]
local OUTCOMES_MAX = ARGV[5]
local WAKE_MAX = 1000
local LEVEL = 1e13

local function fmt(n) return string.format('%.0f', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function job_key(id) return JOB_PREFIX .. id end
local function ready_score(priority, fifo) return (100 - priority) * LEVEL + fifo end
local function num(key, field) return tonumber(redis.call('HGET', key, field) or '0') or 0 end

local function job_reply(status, id, extra)
  local key = job_key(id)
  local fields = redis.call('HGETALL', key)
  local position = -1
  if redis.call('HGET', key, 'state') == 'QUEUED' then
    local rank = redis.call('ZRANK', READY, id)
    if rank then position = rank end
  end
  return {status, position, fields, extra or ''}
end

local function wake(n)
  for _ = 1, n do redis.call('LPUSH', WAKE, '1') end
  redis.call('LTRIM', WAKE, 0, WAKE_MAX - 1)
end

local function outcome(id, state, attempt, err, last_error)
  redis.call('XADD', OUTCOMES, 'MAXLEN', '~', OUTCOMES_MAX, '*', 'job_id', id, 'state', state,
             'attempt', fmt(attempt), 'error', err, 'last_error', last_error or '')
end

local function finish(key, state, now)
  redis.call('HSET', key, 'state', state, 'update_ms', fmt(now))
  redis.call('EXPIRE', key, FINISHED_TTL)
end

local function expire_job(id, key, now)
  redis.call('ZREM', READY, id)
  redis.call('ZREM', DEADLINES, id)
  local err = cjson.encode({code = 4, reason = 'QUEUE_DEADLINE_EXCEEDED',
                            message = 'the job waited in the queue past its deadline'})
  redis.call('HSET', key, 'last_error', err)
  finish(key, 'EXPIRED', now)
  outcome(id, 'EXPIRED', num(key, 'attempt'), err)
end

local function enqueue_again(id, key, now)
  redis.call('HSET', key, 'state', 'QUEUED', 'enqueue_ms', fmt(now), 'update_ms', fmt(now))
  redis.call('ZADD', READY, fmt(ready_score(num(key, 'priority'), num(key, 'fifo_ms'))), id)
  local deadline = num(key, 'deadline_ms')
  if deadline > 0 then redis.call('ZADD', DEADLINES, fmt(deadline), id) end
  wake(1)
end

-- A failed attempt: queued again while attempts remain, else dead-lettered. Returns the new state.
local function retry(id, key, err, now, emit_requeue)
  redis.call('ZREM', LEASES, id)
  redis.call('HSET', key, 'last_error', err)
  local attempt = num(key, 'attempt')
  if attempt < MAX_ATTEMPTS then
    enqueue_again(id, key, now)
    if emit_requeue then outcome(id, 'QUEUED', attempt, err) end
    return 'QUEUED'
  end
  finish(key, 'DEAD_LETTERED', now)
  local flat = redis.call('HGETALL', key)
  local job = {}
  for i = 1, #flat, 2 do job[flat[i]] = flat[i + 1] end
  redis.call('XADD', DEAD, 'MAXLEN', '~', DEAD_MAX, '*', 'job', cjson.encode(job), 'error', err,
             'time_ms', fmt(now))
  local last = {}
  local ok, decoded = pcall(cjson.decode, err)
  if ok and type(decoded) == 'table' then last = decoded end
  local code = tonumber(last.code) or 10
  local summary = tostring(last.reason or '') .. ': ' .. tostring(last.message or '')
  local dead_err = cjson.encode({code = code, reason = 'MAX_ATTEMPTS_EXCEEDED',
    message = 'gave up after ' .. fmt(attempt) .. ' attempts; last error ' .. summary})
  outcome(id, 'DEAD_LETTERED', attempt, dead_err, err)
  return 'DEAD_LETTERED'
end

-- The lease named by ARGV: held when the job is LEASED under that id by that consumer.
local function held(key, lease_id, consumer)
  local f = redis.call('HMGET', key, 'state', 'lease_id', 'consumer')
  return f[1] == 'LEASED' and f[2] == lease_id and f[3] == consumer
end
"""

# ARGV[6..]: id, priority, tenant, classes (JSON), models (JSON), deadline_ms (0 = none), vram, max_size.
ENQUEUE = PRELUDE + r"""
local id = ARGV[6]
local key = job_key(id)
local state = redis.call('HGET', key, 'state')
if state then
  if state == 'QUEUED' or state == 'LEASED' then return job_reply('exists', id) end
  return job_reply('finished', id)
end
local max_size = tonumber(ARGV[13])
if max_size > 0 and redis.call('ZCARD', READY) >= max_size then return {'full', -1, {}, ''} end
local now = now_ms()
local fifo = math.max(now, tonumber(redis.call('GET', FIFO) or '0') + 1)
redis.call('SET', FIFO, fmt(fifo))
local priority = tonumber(ARGV[7])
local deadline = tonumber(ARGV[11])
redis.call('HSET', key, 'id', id, 'state', 'QUEUED', 'attempt', '0', 'priority', ARGV[7], 'tenant', ARGV[8],
           'classes', ARGV[9], 'models', ARGV[10], 'deadline_ms', ARGV[11], 'vram', ARGV[12],
           'enqueue_ms', fmt(now), 'fifo_ms', fmt(fifo), 'create_ms', fmt(now), 'update_ms', fmt(now),
           'lease_id', '', 'consumer', '', 'lease_ms', '0', 'lease_expire_ms', '0', 'last_error', '')
redis.call('ZADD', READY, fmt(ready_score(priority, fifo)), id)
if deadline > 0 then redis.call('ZADD', DEADLINES, fmt(deadline), id) end
wake(1)
return job_reply('ok', id)
"""

# ARGV[6..]: consumer, lease_ms, random suffix, wait samples kept, most heads examined.
# Returns {'ok', wait_ms, fields}, {'paused'}, {'empty'} or {'again'} (only expired heads seen: call again).
LEASE = PRELUDE + r"""
if redis.call('EXISTS', PAUSED) == 1 then
  redis.call('DEL', WAKE)
  return {'paused'}
end
local consumer, lease_ms, suffix = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local samples, limit = tonumber(ARGV[9]), tonumber(ARGV[10])
local now = now_ms()
for _ = 1, limit do
  local head = redis.call('ZPOPMIN', READY)
  if #head == 0 then
    -- Nothing to lease: stale wake tokens would only cause spurious wake-ups. Enqueues after this point
    -- push fresh tokens, so a lessee that blocks next cannot miss one.
    redis.call('DEL', WAKE)
    return {'empty'}
  end
  local id = head[1]
  local key = job_key(id)
  if redis.call('HGET', key, 'state') == 'QUEUED' then
    local deadline = num(key, 'deadline_ms')
    if deadline > 0 and deadline <= now then
      expire_job(id, key, now)
    else
      redis.call('ZREM', DEADLINES, id)
      local attempt = redis.call('HINCRBY', key, 'attempt', 1)
      local lease_id = id .. '.' .. attempt .. '.' .. suffix
      local expire = now + lease_ms
      redis.call('HSET', key, 'state', 'LEASED', 'lease_id', lease_id, 'consumer', consumer,
                 'lease_ms', fmt(lease_ms), 'lease_expire_ms', fmt(expire), 'update_ms', fmt(now))
      redis.call('ZADD', LEASES, fmt(expire), id)
      local wait = math.max(0, now - num(key, 'enqueue_ms'))
      redis.call('LPUSH', WAITS, fmt(wait))
      redis.call('LTRIM', WAITS, 0, samples - 1)
      return {'ok', fmt(wait), redis.call('HGETALL', key)}
    end
  end
end
return {'again'}
"""

# ARGV[6..]: id, lease id, consumer. Undoes a lease whose reply never reached its caller (cancelled call):
# the job goes back to the front of its level and the delivery is not counted.
RELEASE = PRELUDE + r"""
local id = ARGV[6]
local key = job_key(id)
if not held(key, ARGV[7], ARGV[8]) then return 0 end
redis.call('ZREM', LEASES, id)
redis.call('HINCRBY', key, 'attempt', -1)
enqueue_again(id, key, now_ms())
return 1
"""

# ARGV[6..]: id, lease id, consumer.
RENEW = PRELUDE + r"""
local id = ARGV[6]
local key = job_key(id)
if not held(key, ARGV[7], ARGV[8]) then return {'lost', -1, {}, ''} end
local now = now_ms()
local expire = now + num(key, 'lease_ms')
redis.call('HSET', key, 'lease_expire_ms', fmt(expire), 'update_ms', fmt(now))
redis.call('ZADD', LEASES, fmt(expire), id)
return job_reply('ok', id)
"""

# ARGV[6..]: id, lease id, consumer, outcome ('ACK' | 'RETRY'), error JSON (for RETRY).
COMPLETE = PRELUDE + r"""
local id = ARGV[6]
local key = job_key(id)
if not held(key, ARGV[7], ARGV[8]) then return {'lost', -1, {}, ''} end
local now = now_ms()
if ARGV[9] == 'ACK' then
  redis.call('ZREM', LEASES, id)
  finish(key, 'DONE', now)
  return job_reply('ok', id)
end
return job_reply('ok', id, retry(id, key, ARGV[10], now, false))
"""

# ARGV[6..]: id.
GET = PRELUDE + r"""
local id = ARGV[6]
if redis.call('EXISTS', job_key(id)) == 0 then return {'notfound', -1, {}, ''} end
return job_reply('ok', id)
"""

# ARGV[6..]: id. A REMOVED job answers 'ok' again (a retried cancel is not an error).
REMOVE = PRELUDE + r"""
local id = ARGV[6]
local key = job_key(id)
local state = redis.call('HGET', key, 'state')
if not state then return {'notfound', -1, {}, ''} end
if state == 'REMOVED' then return job_reply('ok', id) end
if state ~= 'QUEUED' then return job_reply('notqueued', id) end
redis.call('ZREM', READY, id)
redis.call('ZREM', DEADLINES, id)
finish(key, 'REMOVED', now_ms())
return job_reply('ok', id)
"""

# ARGV[6..]: id, new priority. The job keeps its FIFO key (its original enqueue time).
REPRIORITIZE = PRELUDE + r"""
local id = ARGV[6]
local key = job_key(id)
local state = redis.call('HGET', key, 'state')
if not state then return {'notfound', -1, {}, ''} end
if state ~= 'QUEUED' then return job_reply('notqueued', id) end
local priority = tonumber(ARGV[7])
redis.call('HSET', key, 'priority', ARGV[7], 'update_ms', fmt(now_ms()))
redis.call('ZADD', READY, fmt(ready_score(priority, num(key, 'fifo_ms'))), id)
return job_reply('ok', id)
"""

# ARGV[6..]: cursor (a score; '' for the first page), page size.
# Returns {position of the first job, more (0/1), {{score, fields}, ...}}.
LIST_QUEUED = PRELUDE + r"""
local after, limit = ARGV[6], tonumber(ARGV[7])
local min, position = '-inf', 0
if after ~= '' then
  min = '(' .. after
  position = redis.call('ZCOUNT', READY, '-inf', after)
end
local page = redis.call('ZRANGE', READY, min, '+inf', 'BYSCORE', 'LIMIT', 0, limit + 1, 'WITHSCORES')
local items, more = {}, 0
for i = 1, #page, 2 do
  if #items == limit then more = 1; break end
  local fields = redis.call('HGETALL', job_key(page[i]))
  if #fields > 0 then table.insert(items, {page[i + 1], fields}) end
end
return {position, more, items}
"""

# ARGV[6..]: wait samples to return.
# Returns {now_ms, {{priority, depth}...}, oldest enqueue_ms (-1 = none), queued, running, paused,
#          dead letters, fleet free, fleet busy, {wait samples ms}}.
STATS = PRELUDE + r"""
local now = now_ms()
local levels, oldest, min = {}, -1, '-inf'
while true do
  local head = redis.call('ZRANGE', READY, min, '+inf', 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
  if #head == 0 then break end
  local band = math.floor(tonumber(head[2]) / LEVEL)
  local depth = redis.call('ZCOUNT', READY, fmt(band * LEVEL), '(' .. fmt((band + 1) * LEVEL))
  table.insert(levels, {100 - band, depth})
  local enqueued = num(job_key(head[1]), 'enqueue_ms')
  if enqueued > 0 and (oldest < 0 or enqueued < oldest) then oldest = enqueued end
  min = fmt((band + 1) * LEVEL)
end
local fleet = redis.call('HMGET', FLEET, 'free', 'busy')
return {fmt(now), levels, fmt(oldest), redis.call('ZCARD', READY), redis.call('ZCARD', LEASES),
        redis.call('EXISTS', PAUSED), redis.call('XLEN', DEAD), fleet[1] or '0', fleet[2] or '0',
        redis.call('LRANGE', WAITS, 0, tonumber(ARGV[6]) - 1)}
"""

# ARGV[6..]: none. Wakes up to one blocked lessee per queued job (at most WAKE_MAX).
RESUME = PRELUDE + r"""
redis.call('DEL', PAUSED)
local queued = redis.call('ZCARD', READY)
if queued > 0 then wake(math.min(queued, WAKE_MAX)) end
return queued
"""

# ARGV[6..]: batch size, the EXECUTOR_LOST error JSON.
# Returns {{requeued ids}, {dead-lettered ids}, {expired ids}}; a full batch means: call again.
SWEEP = PRELUDE + r"""
local batch, lost = tonumber(ARGV[6]), ARGV[7]
local now = now_ms()
local requeued, dead, expired = {}, {}, {}
for _, id in ipairs(redis.call('ZRANGE', LEASES, '-inf', fmt(now), 'BYSCORE', 'LIMIT', 0, batch)) do
  local key = job_key(id)
  if redis.call('HGET', key, 'state') == 'LEASED' then
    if retry(id, key, lost, now, true) == 'QUEUED' then table.insert(requeued, id)
    else table.insert(dead, id) end
  else
    redis.call('ZREM', LEASES, id)
  end
end
for _, id in ipairs(redis.call('ZRANGE', DEADLINES, '-inf', fmt(now), 'BYSCORE', 'LIMIT', 0, batch)) do
  local key = job_key(id)
  redis.call('ZREM', DEADLINES, id)
  if redis.call('HGET', key, 'state') == 'QUEUED' then
    expire_job(id, key, now)
    table.insert(expired, id)
  end
end
return {requeued, dead, expired}
"""
