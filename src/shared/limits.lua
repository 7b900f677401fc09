-- Rate limits shared by every node, all or nothing (moltgate, limits.rs).
--
-- The same conservative sub-bucketed sliding window as the in-memory
-- limiter (src/policy/rate.rs): a window W is cut into B buckets of width
-- w = ceil(W / B), and a key admits at time t (bucket k) only while the
-- buckets k-B .. k hold fewer than `limit` units, a span that reaches back
-- at least W. Time is Redis's TIME, so node clocks do not matter.
--
-- KEYS[i]: one limited key's counters, a hash of bucket index -> units.
-- ARGV[1]: B. Then three values per key: limit, w (microseconds), want
--   (1 for one request; more for a lease, which takes what fits, up to want).
-- Returns {1, granted_1, valid_us_1, granted_2, ...} when every key admits,
-- after counting them all (valid_us: time left in the bucket the units were
-- counted in; a lease must be spent within it), or {0, i, retry_us} naming
-- the key that frees up last, having counted nothing.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local B = tonumber(ARGV[1])
local grants, heads = {}, {}
local worst, worst_i = -1, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 + (i - 1) * 3])
  local width = tonumber(ARGV[3 + (i - 1) * 3])
  local want = tonumber(ARGV[4 + (i - 1) * 3])
  local k = math.floor(now / width)
  local fields = {}
  for b = k - B, k do fields[#fields + 1] = string.format('%d', b) end
  local counts = redis.call('HMGET', KEYS[i], unpack(fields))
  local total = 0
  for j = 1, #counts do total = total + (tonumber(counts[j]) or 0) end
  if total < limit then
    grants[i] = math.min(want, limit - total)
    heads[i] = k
  else
    -- Bucket k-B+j-1 leaves the span when bucket k+j begins; find the first
    -- after which one more unit fits.
    local remaining, at = total, k + 1 + B
    for j = 1, #counts do
      remaining = remaining - (tonumber(counts[j]) or 0)
      if remaining < limit then
        at = k + j
        break
      end
    end
    local retry = at * width - now
    if retry > worst then worst, worst_i = retry, i end
  end
end
if worst_i > 0 then return {0, worst_i, worst} end
local out = {1}
for i = 1, #KEYS do
  local width = tonumber(ARGV[3 + (i - 1) * 3])
  local k = heads[i]
  redis.call('HINCRBY', KEYS[i], string.format('%d', k), grants[i])
  redis.call('PEXPIRE', KEYS[i], math.ceil(width * (B + 1) / 1000) + 1000)
  if redis.call('HLEN', KEYS[i]) > B + 2 then
    for _, f in ipairs(redis.call('HKEYS', KEYS[i])) do
      if tonumber(f) < k - B then redis.call('HDEL', KEYS[i], f) end
    end
  end
  out[#out + 1] = grants[i]
  out[#out + 1] = (k + 1) * width - now
end
return out
