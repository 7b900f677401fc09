-- wrk script of benches/load/run.sh: every request is a new message.
--
-- wrk restarts its Lua state on every run, so a counter that starts at 0
-- would repeat the previous run's messages (and a passthrough gateway would
-- answer them from its dedupe table). The script therefore gives every run
-- its own number, LOAD_SEQ, and setup() gives every wrk thread its own range:
--
--   update id   <LOAD_SEQ><thread, 2 digits><counter, 8 digits>
--   tag         m<LOAD_SEQ>t<thread>n<counter>   (in the message text)
--
-- Environment:
--   LOAD_SEQ            the run's number (1, 2, ...), never reused in a run
--   LOAD_TEMPLATE       file with the body; @ID@ @MID@ @USER@ @CONV@ @TAG@
--                       are replaced per request (run.sh builds its curl
--                       samples from the same file)
--   LOAD_CONVERSATIONS  distinct conversations (chats, threads) to cycle through
-- The headers (content type, JWT or Telegram secret) come from wrk -H.

local seq = os.getenv("LOAD_SEQ")
local template_file = os.getenv("LOAD_TEMPLATE")
local conversations = tonumber(os.getenv("LOAD_CONVERSATIONS") or "1000")
assert(seq and seq:match("^[1-9]%d*$"), "LOAD_SEQ must be the run's number (1, 2, ...)")
assert(template_file, "LOAD_TEMPLATE must name the body template")
assert(conversations and conversations >= 1, "LOAD_CONVERSATIONS must be >= 1")

local f = assert(io.open(template_file, "rb"))
local template = f:read("*a")
f:close()

-- Odd entries are literal text, even entries placeholder names.
local pieces, pos = {}, 1
while true do
  local s, e, name = template:find("@(%u+)@", pos)
  if not s then break end
  pieces[#pieces + 1] = template:sub(pos, s - 1)
  pieces[#pieces + 1] = name
  pos = e + 1
end
pieces[#pieces + 1] = template:sub(pos)

wrk.method = "POST"

local next_thread = 0
function setup(thread)
  assert(next_thread < 100, "at most 99 wrk threads")
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

local n = 0
local values, buf = {}, {}
function request()
  n = n + 1
  local t = tid or 0
  local conv = (n + t * 7919) % conversations + 1
  values.ID = seq .. string.format("%02d%08d", t, n)
  values.MID = tostring(n)
  values.CONV = tostring(conv)
  values.USER = tostring(100000000 + conv)
  values.TAG = "m" .. seq .. "t" .. t .. "n" .. n
  for i = 1, #pieces do
    if i % 2 == 1 then buf[i] = pieces[i] else buf[i] = values[pieces[i]] end
  end
  return wrk.format(nil, nil, nil, table.concat(buf))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d status_errors=%d socket_errors=%d p50_us=%d p90_us=%d p99_us=%d mean_us=%.0f\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
