using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Dispatcher.Delivery;

/// <summary>
/// What <see cref="DeliveryStore.BeginAsync"/> found before an attempt. Not <see cref="Leased"/> with a
/// final <see cref="State"/>: already finished; with an empty one: another attempt holds the lease.
/// <see cref="DamagedRecord"/>: the type of what stood at the record's key instead of a hash (now set aside); the
/// delivery's history is unknown, so it must not be posted.
/// <see cref="LastStatus"/> and <see cref="LastError"/>: the record's last try (0 and "" when none is known);
/// <see cref="AnswerLost"/>: an earlier try's answer was lost (<see cref="DeliveryRecord.AnswerLost"/>).
/// </summary>
internal readonly record struct BeginResult(bool Leased, string State, int Attempts, int Claims, DateTimeOffset? Since, DateTimeOffset? PausedUntil,
    string? DamagedRecord = null, int LastStatus = 0, string LastError = "", bool AnswerLost = false, bool Probe = false, int FreeAttempts = 0)
{
    public bool AlreadyFinished => !Leased && State.Length > 0;
}

/// <summary>What an operator's replay of a dead letter did.</summary>
internal enum ReplayOutcome
{
    Replayed,
    NotADeadLetter,

    /// <summary>A dead letter whose record lost its body or target: it stays a dead letter.</summary>
    NotReplayable,
}

/// <summary>How an attempt (or a decision not to attempt) ends.</summary>
internal enum FinishMode
{
    /// <summary>2xx: recorded, acknowledged, body dropped, record kept for the retention period.</summary>
    Delivered,

    /// <summary>Transient failure: body kept in the record, id put into the retry schedule.</summary>
    Retry,

    /// <summary>Target paused: back into the schedule without spending an attempt.</summary>
    Reschedule,

    /// <summary>Permanent failure, budget spent, or poison: into the dead letters with a hint.</summary>
    DeadLetter,

    /// <summary>Already delivered or dead-lettered: drop this copy (stream entry or schedule slot).</summary>
    Skip,
}

/// <summary>
/// A delivery's state transitions in Redis. Each one is a Lua script, so that the record, the stream
/// acknowledgement, the schedule and the dead letters never disagree: an entry leaves the stream only
/// in the same step that puts it somewhere else.
/// </summary>
internal sealed class DeliveryStore(IConnectionMultiplexer redis)
{
    // KEYS: 1 record, 2 lease, 3 paused targets, 4 where a damaged record is set aside
    // ARGV: 1 lease token, 2 lease ms, 3 claimed (1/0), 4 target, 5 now ms, 6 probe interval ms, 7 a damaged record's keep s
    // Returns {0} leased by another attempt; {2, state} already finished (nothing taken);
    // {1, state, attempts, claims, since, pausedUntil, probe, damaged, lastStatus, lastError, answerLost, freeAttempts} the lease is ours (probe: this
    // attempt is the paused target's probe; damaged: '' or the type found at the record's key; the caller needs only
    // pausedUntil = 0 and damaged = '' to go ahead; the last try's status and error for a dead letter written without a try).
    // The lease already ours: a retry of this very call (same token, same now) whose first reply was lost. It
    // changes nothing again: a second claim would count a crash that never happened (poison sooner), and the
    // probe it took the first time (the probe time moved to exactly now + interval) is still its own.
    // A count or time that is not a number (a damaged field) reads as none, and the claims count starts again: failing
    // here, after the lease was taken, the attempt never reached the poison check, and the entry came back for good.
    private const string BeginScript = $$"""
        {{IncrementCount}}
        -- A stored count or time counts only as a whole number in range: Lua reads nan, inf, 1e20 and 2.5 as numbers,
        -- and Redis replies a non-finite or huge one as -2^63, which the caller cannot take.
        local function whole(v, max)
          local n = tonumber(v)
          if n and n >= 0 and n <= max and n == math.floor(n) then
            return n
          end
          return nil
        end
        local lease = redis.call('GET', KEYS[2])
        if lease and lease ~= ARGV[1] then
          return {0}
        end
        local again = lease == ARGV[1]
        -- pcall: a record that is not a hash failed every begin, so the entry was reclaimed for good (its claims were
        -- never counted, so it never became poison). Its history (delivered? posted?) is unknown: it is set aside for a
        -- person, and a new record says so (a retry of this call whose reply was lost must find it), with no POST.
        local r = redis.pcall('HMGET', KEYS[1], 'state', 'attempts', 'since', 'at', 'damaged', 'lastStatus', 'lastError', 'answerLost', 'freeAttempts')
        if r.err then
          local t = redis.call('TYPE', KEYS[1]).ok
          if t == 'hash' then
            return redis.error_reply(r.err)
          end
          redis.call('RENAME', KEYS[1], KEYS[4])
          redis.call('EXPIRE', KEYS[4], ARGV[7])
          redis.call('HSET', KEYS[1], 'damaged', t)
          r = {false, false, false, false, t, false, false, false, false}
        end
        if r[1] == 'delivered' or r[1] == 'deadlettered' or r[1] == 'discarded' then
          return {2, r[1]}
        end
        redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
        local claims = 0
        if ARGV[3] == '1' then
          if again then
            claims = whole(redis.call('HGET', KEYS[1], 'claims'), 1e9) or 0
          else
            claims = increment(KEYS[1], 'claims')
          end
        end
        local paused = 0
        local probe = 0
        local stored = redis.pcall('HGET', KEYS[3], ARGV[4])
        if type(stored) == 'table' then
          -- The pause hash is another type (damaged): no target is paused. Failing here, after the claim was counted, no
          -- run was posted, and each became poison at its MaxClaims-th reclaim.
          stored = false
        end
        local probeAt = whole(stored, 1e14)
        if stored and not probeAt then
          -- A damaged pause time: the target is probed now, as when its pause is over.
          redis.call('HSET', KEYS[3], ARGV[4], tonumber(ARGV[5]) + tonumber(ARGV[6]))
          probe = 1
        end
        if probeAt then
          if again and probeAt == tonumber(ARGV[5]) + tonumber(ARGV[6]) then
            probe = 1
          elseif probeAt > tonumber(ARGV[5]) then
            paused = probeAt
          else
            redis.call('HSET', KEYS[3], ARGV[4], tonumber(ARGV[5]) + tonumber(ARGV[6]))
            probe = 1
          end
        end
        return {1, r[1] or '', whole(r[2], 1e9) or 0, claims, whole(r[3], 1e14) or whole(r[4], 1e14) or 0, paused, probe, r[5] or '',
          whole(r[6], 999) or 0, r[7] or '', r[8] == '1' and 1 or 0, whole(r[9], 1e9) or 0}
        """;

    // KEYS: 1 record, 2 lease, 3 stream, 4 retry schedule, 5 dead letters, 6 attempts, 7 target failures, 8 paused targets,
    //       9 retry claims, 10 Port reports, 11 the run index (only for a delivery with a run id)
    // ARGV: 1 mode, 2 stream id or '', 3 group, 4 delivery id, 5 lease token, 6 now ms, 7 due ms, 8 target,
    //       9 retention s, 10 attempt json or '', 11 pause threshold, 12 probe at ms, 13 k = number of report args,
    //       14..13+k Port report field/value pairs, then record field/value pairs
    // Returns {failures, report error}: failures -1 when the delivery had already finished elsewhere (only this copy was
    // dropped); the report error '' unless the Port report could not be written.
    // The stream entry is acknowledged last, once the outcome is written: Redis does not undo a script's writes
    // when a later command fails (a damaged key), and an entry acknowledged before its dead letter or retry slot
    // was written would be lost. Left pending, it is reclaimed. (The first write is still the HDEL below: Redis at
    // maxmemory refuses a script's command that may add memory (flagged denyoom, as SET and XADD are, HDEL not) only
    // while the script has written nothing, so a script that starts with the HDEL runs to its end.)
    private static readonly string FinishScript = $$"""
        {{IncrementCount}}
        {{DeadLetterAmong}}
        local mode = ARGV[1]
        local function acknowledge()
          if ARGV[2] ~= '' then
            redis.call('XACK', KEYS[3], ARGV[3], ARGV[2])
            redis.call('XDEL', KEYS[3], ARGV[2])
          end
        end
        -- Whatever the outcome, this attempt ended: a claim of its schedule slot that never got here did not. pcall: a claims
        -- key of another type (damaged) holds no claim, and failed every finish, a delivered run's too, which was then
        -- posted again at each reclaim.
        redis.pcall('HDEL', KEYS[9], ARGV[4])
        local ours = redis.call('GET', KEYS[2]) == ARGV[5]
        local r = redis.call('HMGET', KEYS[1], 'state', 'finishedBy')
        local state = r[1]
        local finished = state == 'delivered' or state == 'deadlettered' or state == 'discarded'
        -- Dropped: a result that would undo a finished delivery, whoever holds the lease (two attempts overlap when
        -- a lease runs out mid-attempt, and either may record first); only Azure's acceptance outranks a dead letter (or a
        -- discarded one: the run did start).
        -- Also dropped: a second run of this very attempt's finish (the first one's reply was lost on the way back).
        if mode == 'skip' or r[2] == ARGV[5] or (finished and (mode ~= 'delivered' or state == 'delivered')) then
          if finished then redis.call('ZREM', KEYS[4], ARGV[4]) end
          if ours then redis.call('DEL', KEYS[2]) end
          acknowledge()
          return {-1, ''}
        end
        -- Where the delivery goes next first; the attempt log; then the target's health and what the delivery leaves (the
        -- schedule, a dead letter it outranks, its body); the record's state and finishedBy; the Port report after them. A run of this
        -- finish that failed half-way is run again by the processor: it must find the delivery placed, neither finished
        -- (the state) nor done (finishedBy), and must not have counted a target failure (a pause of a healthy target).
        if mode == 'retry' or mode == 'reschedule' then
          redis.call('ZADD', KEYS[4], ARGV[7], ARGV[4])
        elseif mode == 'deadletter' then
          redis.call('ZADD', KEYS[5], ARGV[6], ARGV[4])
        end
        -- Azure accepted a run that is delivered: a finish that fails now is posted again at the next reclaim (a second
        -- pipeline run, and up to MaxClaims more), so a damaged key beside the record (the attempt log, the target's
        -- health, the schedule, the dead letters) must not stop it. A key of another type holds nothing of this delivery.
        local recorded = mode == 'delivered' and redis.pcall or redis.call
        if ARGV[10] ~= '' then
          recorded('RPUSH', KEYS[6], ARGV[10])
          -- A replay keeps the last MaxAttemptLog and a round adds at most as many, unless its tries spend no attempt
          -- (probes of a paused target, 429s), which MaxAttempts does not bound: the operator API reads the log whole.
          recorded('LTRIM', KEYS[6], -{{2 * MaxAttemptLog}}, -1)
          recorded('EXPIRE', KEYS[6], ARGV[9])
        end
        if mode == 'deadletter' then
          -- A dead letter waits for an operator, its attempt history with it.
          redis.call('PERSIST', KEYS[6])
        end
        local k = tonumber(ARGV[13])
        local failures = 0
        if mode == 'delivered' then
          recorded('HDEL', KEYS[7], ARGV[8])
          recorded('HDEL', KEYS[8], ARGV[8])
          if state == 'deadlettered' then
            recorded('ZREM', KEYS[5], ARGV[4])
          end
          recorded('ZREM', KEYS[4], ARGV[4])
          redis.call('HDEL', KEYS[1], 'body', 'reason', 'hint', 'deadLetteredAt', 'nextAttemptAt')
        elseif mode == 'retry' then
          failures = increment(KEYS[7], ARGV[8])
          if failures >= tonumber(ARGV[11]) and redis.call('HEXISTS', KEYS[8], ARGV[8]) == 0 then
            redis.call('HSET', KEYS[8], ARGV[8], ARGV[12])
          end
        elseif mode == 'deadletter' then
          redis.call('ZREM', KEYS[4], ARGV[4])
          -- The retry that led here is not a next attempt (the record showed it as one).
          redis.call('HDEL', KEYS[1], 'nextAttemptAt')
        end
        if state or #ARGV >= 14 + k then
          local fields = {'finishedBy', ARGV[5]}
          for i = 14 + k, #ARGV do fields[#fields + 1] = ARGV[i] end
          redis.call('HSET', KEYS[1], unpack(fields))
        end
        -- The run index (GET /api/deliveries?runId=) lasts as long as the records it finds: the Ingress gives it the
        -- idempotency window, which a dead letter (kept until an operator acts) and a delivered record (kept for the
        -- retention from now) outlive, and the lookup then answered "no deliveries". pcall: it must not fail the outcome.
        -- No expiry while one of its deliveries is a dead letter; else at least the retention from now (a retry's record,
        -- kept until it ends, is covered again at each attempt).
        if KEYS[11] and mode ~= 'skip' then
          redis.pcall('SADD', KEYS[11], ARGV[4])
          if mode == 'deadletter' then
            redis.pcall('PERSIST', KEYS[11])
          else
            local ttl = redis.pcall('TTL', KEYS[11])
            if type(ttl) == 'number' and ttl < tonumber(ARGV[9]) and (ttl >= 0 or not deadLetterAmong(KEYS[11], KEYS[5], ARGV[4])) then
              redis.pcall('EXPIRE', KEYS[11], ARGV[9])
            end
          end
        end
        -- The Port report in the same step as the outcome (a crash right after it cannot lose it), but after every write
        -- that can fail (a re-run of a finish that failed half-way would write it again), and never failing the outcome:
        -- a damaged reports key stopped every finish with a report, and the run was posted again at each reclaim.
        local reportError = ''
        if k > 0 then
          local report = {}
          for i = 14, 13 + k do report[#report + 1] = ARGV[i] end
          local added = redis.pcall('XADD', KEYS[10], 'MAXLEN', '~', {{RedisKeys.PortReportsMaxLength}}, '*', unpack(report))
          if type(added) == 'table' and added.err then
            reportError = added.err
            -- The operator API then says so ("not_queued"), where no report at all read the same as reporting off.
            if redis.call('EXISTS', KEYS[1]) == 1 then
              redis.pcall('HSET', KEYS[1], '{{DeliveryRecord.PortReport}}', '{{DeliveryRecord.PortReportNotQueued}}', '{{DeliveryRecord.PortReportAt}}', ARGV[6])
              redis.pcall('HDEL', KEYS[1], '{{DeliveryRecord.PortReportEntry}}')
            end
          elseif redis.call('EXISTS', KEYS[1]) == 1 then
            -- For the operator API: the record names the newest report until a reporter ends that one. How an earlier report
            -- ended goes: it is no longer the delivery's last word to Port. Never creating a record (it would have no expiry),
            -- and never failing the outcome.
            redis.pcall('HSET', KEYS[1], '{{DeliveryRecord.PortReportEntry}}', added, '{{DeliveryRecord.PortReportAt}}', ARGV[6])
            redis.pcall('HDEL', KEYS[1], '{{DeliveryRecord.PortReport}}')
          end
        end
        if mode == 'delivered' then
          redis.call('EXPIRE', KEYS[1], ARGV[9])
        end
        if ours then
          redis.call('DEL', KEYS[2])
        end
        acknowledge()
        return {failures, reportError}
        """;

    // Whether a run index holds a dead letter other than `except`; a damaged index or dead-letter set counts as holding one
    // (the index is then left as it is: pcall's error is a table, as true as a score).
    private const string DeadLetterAmong = """
        local function deadLetterAmong(index, deadLetters, except)
          local members = redis.pcall('SMEMBERS', index)
          if type(members) ~= 'table' or members.err then
            return true
          end
          for _, id in ipairs(members) do
            if id ~= except and redis.pcall('ZSCORE', deadLetters, id) then
              return true
            end
          end
          return false
        end
        """;

    // A count that is not a number (a damaged field), or past any count the relay makes, starts again at 1 instead of
    // failing: these counts are written where a failure would leave a script half done, and read as 32-bit numbers. A
    // hash of another type (damaged) counts 1 each time and is left as it is: the retry claims' failed every claim of a due
    // retry, and with it every read of the Dispatcher's loop.
    private const string IncrementCount = """
        local function increment(key, field)
          local n = redis.pcall('HINCRBY', key, field, 1)
          if type(n) == 'table' or n > 1000000000 then
            redis.pcall('HSET', key, field, 1)
            return 1
          end
          return n
        end
        """;

    // KEYS: 1 retry schedule, 2 retry claims, 3 this claim's batch. ARGV: 1 now ms, 2 lease-until ms, 3 count, 4 lease ms
    // Returns {id, reclaimed (1/0), ...}.
    // Moving the score forward is the claim: a replica that dies holding it lets it fall due again. The
    // claims hash tells that case apart (the finish of an attempt removes the id), so that an item that
    // crashes every replica is counted as poison like a reclaimed stream entry, not retried forever.
    // The batch names what this claim took, so that a claim whose reply is lost (a timeout) can be undone: else its
    // slots would wait out the lease and their next claim would count a crash, and a slow Redis would make poison.
    // It is the first write (Redis keeps a script's writes up to a failing command: a batch written last would miss
    // the slots moved before a failure).
    private const string ClaimDueScript = $$"""
        {{IncrementCount}}
        local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
        if #ids == 0 then
          return {}
        end
        redis.call('RPUSH', KEYS[3], unpack(ids))
        redis.call('PEXPIRE', KEYS[3], ARGV[4])
        local claimed = {}
        for _, id in ipairs(ids) do
          redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
          local n = increment(KEYS[2], id)
          claimed[#claimed + 1] = id
          claimed[#claimed + 1] = n > 1 and 1 or 0
        end
        return claimed
        """;

    // One claim of a slot undone, not the slot's whole count: a count above one holds an earlier claim that crashed, which
    // the next claim must still report. (Once an attempt has begun, the begin has counted that crash in the record, and the
    // lease release deletes the count instead.) A count that is not a number (or longer than any count a claim makes: see
    // IncrementCount) goes, and a claims key that is not a hash is passed over (pcall), rather than stop the script before
    // the slot is released.
    // HDEL first, then HSET of the count less one, not HINCRBY: the releases call this before their ZADD, and Redis over
    // maxmemory refuses HINCRBY, HSET and ZADD (denyoom) only while a script has written nothing; HDEL needs no memory (and
    // counts as written even when refused for the wrong type). A release on a Redis that filled after its claim then goes
    // through, where it was refused, and the slot waited out its lease and its next claim counted a crash.
    private const string DecrementCount = """
        local function decrement(key, field)
          local n = redis.pcall('HGET', key, field)
          redis.pcall('HDEL', key, field)
          if type(n) == 'string' and #n <= 10 and string.match(n, '^%d+$') and tonumber(n) > 1 then
            redis.pcall('HSET', key, field, tonumber(n) - 1)
          end
        end
        """;

    // KEYS: 1 retry schedule, 2 retry claims, 3 the claim's batch. ARGV: 1 now ms, 2 the claim's lease-until ms
    // Only slots still where that claim put them are undone: one an attempt has since begun or finished has moved.
    // The batch goes first: a DEL needs no memory, and after it Redis over maxmemory lets the ZADDs through (see DecrementCount).
    private const string ReleaseClaimBatchScript = $$"""
        {{DecrementCount}}
        local ids = redis.call('LRANGE', KEYS[3], 0, -1)
        redis.call('DEL', KEYS[3])
        for _, id in ipairs(ids) do
          if tonumber(redis.call('ZSCORE', KEYS[1], id)) == tonumber(ARGV[2]) then
            decrement(KEYS[2], id)
            redis.call('ZADD', KEYS[1], 'XX', ARGV[1], id)
          end
        end
        return #ids
        """;

    // KEYS: 1 retry schedule, 2 retry claims. ARGV: 1 now ms, 2.. delivery ids
    private const string ReleaseClaimsScript = $$"""
        {{DecrementCount}}
        for i = 2, #ARGV do
          decrement(KEYS[2], ARGV[i])
          redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
        end
        return 0
        """;

    // Scripts, not MULTI/EXEC, for the two removals below: Redis over maxmemory refuses to queue any command in a MULTI,
    // these too, though none of them needs memory (none is denyoom), and removing is how memory comes back.

    // KEYS: 1 retry schedule, 2 retry claims. ARGV: 1 delivery id
    private const string RemoveFromScheduleScript = """
        redis.call('ZREM', KEYS[1], ARGV[1])
        redis.call('HDEL', KEYS[2], ARGV[1])
        return 0
        """;

    // KEYS: 1 stream. ARGV: 1 consumer group, 2 entry id
    // In one step: acknowledged but left in the stream (a failure between the two), nothing would read it again and it
    // would stay the oldest entry, the backlog's age growing for good.
    private const string RemoveMalformedEntryScript = """
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        redis.call('XDEL', KEYS[1], ARGV[2])
        return 0
        """;

    /// <summary>The attempts kept in a delivery's log at a replay: Dispatcher:Retry:MaxAttempts's upper bound.</summary>
    internal const int MaxAttemptLog = 100;

    // KEYS: 1 dead letters, 2 record, 3 stream, 4 attempt log. ARGV: 1 delivery id, 2 now ms, 3 wake channel, 4 attempts kept
    // Returns the new stream id; nil: not a dead letter; 0: a dead letter without body or target, or whose record is
    // not a hash (left as it is: an error would stop every batch replay at it, for good).
    // The dead letter leaves its index last: Redis keeps a script's writes up to a failing command (a damaged stream
    // key), and one removed first would be neither a dead letter nor queued, lost to the operator API.
    private static readonly string ReplayScript = $$"""
        if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
          return false
        end
        if redis.call('TYPE', KEYS[2]).ok ~= 'hash' then
          return 0
        end
        local r = redis.call('HMGET', KEYS[2], 'org', 'webhook', 'body', 'key', 'run', 'at', 'traceparent', 'tracestate', 'replays')
        if not r[1] or not r[2] or not r[3] or not r[4] then
          -- Checked before anything changes: a dead letter that cannot be replayed stays one.
          return 0
        end
        -- A receipt time the entry could not be read with (damaged) is now: else the Dispatcher would drop the entry as
        -- malformed, and the run, answered 202 here, would be neither queued nor a dead letter.
        local at = r[6]
        if not at or not string.match(at, '^%d+$') or #at > 15 or tonumber(at) > {{DateTimeOffset.MaxValue.ToUnixTimeMilliseconds()}} then at = ARGV[2] end
        local f = {'id', ARGV[1], 'org', r[1], 'webhook', r[2], 'body', r[3], 'key', r[4], 'at', at}
        if r[5] and r[5] ~= '' then f[#f + 1] = 'run'; f[#f + 1] = r[5] end
        if r[7] and r[7] ~= '' then f[#f + 1] = 'traceparent'; f[#f + 1] = r[7] end
        if r[8] and r[8] ~= '' then f[#f + 1] = 'tracestate'; f[#f + 1] = r[8] end
        -- The attempts start again from 1 in the run's trace: the entry says which replay they belong to, and the record keeps
        -- the same count (below). One that is not a whole number under 1e9 (damaged) starts again from 1.
        local replays = (r[9] and string.match(r[9], '^%d+$') and #r[9] < 10 and tonumber(r[9]) or 0) + 1
        f[#f + 1] = 'replays'; f[#f + 1] = replays
        -- Each replay adds a round of attempts to the log, which the operator API reads whole: the latest ARGV[4]
        -- stay (one round's most). pcall: a damaged log must not stop the replay. Kept the first write: Redis at maxmemory
        -- refuses the XADD and HSET below (denyoom) only while the script has written nothing, and deploy.md says a replay
        -- goes through on a full Redis.
        redis.pcall('LTRIM', KEYS[4], -tonumber(ARGV[4]), -1)
        local sid = redis.call('XADD', KEYS[3], '*', unpack(f))
        redis.call('HSET', KEYS[2], 'state', 'queued', 'attempts', 0, 'claims', 0, 'streamId', sid, 'updatedAt', ARGV[2], 'since', ARGV[2],
          'replays', replays)
        redis.call('HDEL', KEYS[2], 'body', 'hint', 'reason', 'nextAttemptAt', 'deadLetteredAt', 'damaged', 'freeAttempts')
        -- After the XADD nothing may fail (the run would be queued and still a dead letter).
        redis.call('ZREM', KEYS[1], ARGV[1])
        redis.call('PUBLISH', ARGV[3], sid)
        return sid
        """;

    // KEYS: 1 dead letters, 2 record, 3 attempt log, 4 the run index (only when the record names a run id).
    // ARGV: 1 delivery id, 2 now ms, 3 retention s
    // Returns 1: discarded; 0: not a dead letter. A script, not a transaction: a WATCH of the dead-letter index would
    // abort (and answer "not a dead letter") whenever another Dispatcher dead-lettered a run meanwhile. The record is
    // kept as long as a delivered one, then goes; the index entry goes last, as in the replay.
    private const string DiscardScript = $$"""
        {{DeadLetterAmong}}
        if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
          return 0
        end
        local t = redis.call('TYPE', KEYS[2]).ok
        if t ~= 'hash' and t ~= 'none' then
          -- A damaged record (not a hash) cannot be kept as discarded: it goes, so that the operator can clear it.
          redis.call('DEL', KEYS[2])
          redis.call('EXPIRE', KEYS[3], ARGV[3])
          redis.call('ZREM', KEYS[1], ARGV[1])
          return 1
        end
        -- The HDEL first: Redis at maxmemory refuses a command flagged denyoom (HSET, SET, XADD; not HDEL) only while the
        -- script has written nothing, and discarding is what deploy.md tells an operator to do when Redis is full.
        redis.call('HDEL', KEYS[2], 'body')
        redis.call('HSET', KEYS[2], 'state', 'discarded', 'updatedAt', ARGV[2])
        redis.call('EXPIRE', KEYS[2], ARGV[3])
        redis.call('EXPIRE', KEYS[3], ARGV[3])
        -- Kept for good while the run was a dead letter; now it goes with the record, unless another of its deliveries is one.
        if KEYS[4] and redis.pcall('TTL', KEYS[4]) == -1 and not deadLetterAmong(KEYS[4], KEYS[1], ARGV[1]) then
          redis.pcall('EXPIRE', KEYS[4], ARGV[3])
        end
        redis.call('ZREM', KEYS[1], ARGV[1])
        return 1
        """;

    // KEYS: 1 lease, 2 retry schedule, 3 retry claims. ARGV: 1 lease token, 2 delivery id, 3 now ms, 4 from the schedule:
    // 0 no, 1 yes, 2 yes and the attempt may not have begun (a begin cut short at the stop).
    // A retry taken from the schedule was also claimed there (its due time pushed a lease ahead, a claim counted):
    // both are undone, so that it is due again at once and its next claim does not count as a crash. Where the lease is not
    // this attempt's, mode 2 still undoes the claim, by one: the begin never took the lease, so never counted a crash.
    private const string ReleaseLeaseScript = $$"""
        {{DecrementCount}}
        -- pcall: a lease key of another type (damaged) is not this attempt's, and must not keep the claim from being undone.
        local ours = redis.pcall('GET', KEYS[1]) == ARGV[1]
        if ours then
          redis.call('DEL', KEYS[1])
        end
        if ARGV[4] == '2' or (ours and ARGV[4] == '1') then
          -- The count first, as in the other releases: its HDEL lets the ZADD through on a Redis over maxmemory.
          if ours then
            redis.call('HDEL', KEYS[3], ARGV[2])
          else
            decrement(KEYS[3], ARGV[2])
          end
          redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[2])
        end
        return ours and 1 or 0
        """;

    private TimeSpan? _operationTimeout;

    private IDatabase Db => redis.GetDatabase();

    /// <summary>How long one call may take before the client gives up on it: the longer of its sync and async timeouts.</summary>
    public TimeSpan OperationTimeout => _operationTimeout ??= TimeSpan.FromMilliseconds(Math.Max(redis.TimeoutMilliseconds, AsyncTimeoutOf(redis)));

    private static int AsyncTimeoutOf(IConnectionMultiplexer redis)
    {
        try
        {
            return ConfigurationOptions.Parse(redis.Configuration).AsyncTimeout;
        }
        catch (ArgumentException)
        {
            return 0;
        }
    }

    /// <summary>Ends an attempt's lease if it still holds it; best effort (Redis may be what failed).</summary>
    /// <param name="fromSchedule">The attempt was a retry claimed from the schedule: its claim is undone too.</param>
    public Task ReleaseLeaseAsync(string deliveryId, string leaseToken, bool fromSchedule, DateTimeOffset now) =>
        ReleaseLeaseAsync(deliveryId, leaseToken, fromSchedule ? 1 : 0, now);

    /// <summary>
    /// At the stop, between two tries of an attempt's begin (a try whose reply was lost may have taken the lease): the lease
    /// is given back if it is this attempt's, and a retry's claim of its schedule slot is undone either way, in one step, so
    /// that a Redis failure cannot undo one without the other. Best effort.
    /// </summary>
    public Task ReleaseUnfinishedBeginAsync(string deliveryId, string leaseToken, bool fromSchedule, DateTimeOffset now) =>
        ReleaseLeaseAsync(deliveryId, leaseToken, fromSchedule ? 2 : 0, now);

    private async Task ReleaseLeaseAsync(string deliveryId, string leaseToken, int mode, DateTimeOffset now)
    {
        try
        {
            await Db.ScriptEvaluateAsync(ReleaseLeaseScript, [RedisKeys.Lease(deliveryId), RedisKeys.RetrySchedule, RedisKeys.RetryClaims],
                [leaseToken, deliveryId, now.ToUnixTimeMilliseconds(), mode]);
        }
        catch (Exception ex) when (RedisFailures.IsFailure(ex))
        {
        }
    }

    /// <param name="keepDamaged">How long a record found damaged is kept under <see cref="RedisKeys.DamagedDelivery"/>; 7 days if not given.</param>
    public async Task<BeginResult> BeginAsync(DeliveryEntry entry, string leaseToken, TimeSpan lease, bool claimed, DateTimeOffset now, TimeSpan probeInterval,
        TimeSpan? keepDamaged = null)
    {
        var result = (RedisResult[])(await Db.ScriptEvaluateAsync(BeginScript,
            [RedisKeys.Delivery(entry.DeliveryId), RedisKeys.Lease(entry.DeliveryId), RedisKeys.PausedTargets, RedisKeys.DamagedDelivery(entry.DeliveryId)],
            [leaseToken, (long)lease.TotalMilliseconds, claimed ? 1 : 0, entry.Target, now.ToUnixTimeMilliseconds(), (long)probeInterval.TotalMilliseconds,
                (long)(keepDamaged ?? TimeSpan.FromDays(7)).TotalSeconds]))!;
        switch ((int)result[0])
        {
            case 0:
                return new BeginResult(false, "", 0, 0, null, null);
            case 2:
                return new BeginResult(false, (string)result[1]!, 0, 0, null, null);
            default:
                break;
        }
        var since = (long)result[4];
        var paused = (long)result[5];
        var damaged = (string)result[7]!;
        return new BeginResult(
            true,
            (string)result[1]!,
            (int)result[2],
            (int)result[3],
            since > 0 ? DateTimeOffset.FromUnixTimeMilliseconds(since) : null,
            paused > 0 ? DateTimeOffset.FromUnixTimeMilliseconds(paused) : null,
            damaged.Length > 0 ? damaged : null,
            (int)result[8],
            (string)result[9]!,
            (int)result[10] == 1,
            (int)result[6] == 1,
            (int)result[11]);
    }

    public sealed record FinishRequest(
        FinishMode Mode,
        DeliveryEntry Entry,
        string? StreamId,
        string LeaseToken,
        DateTimeOffset Now,
        DateTimeOffset? DueAt,
        TimeSpan Retention,
        string? AttemptJson,
        int PauseThreshold,
        DateTimeOffset PauseProbeAt,
        IReadOnlyList<KeyValuePair<string, RedisValue>> Fields,
        PortReporting.PortReport? Report = null);

    /// <summary>What a finish did.</summary>
    /// <param name="Failures">The target's consecutive transient failures after a retry; -1 when the delivery had already
    /// finished elsewhere (only this copy was dropped); 0 otherwise.</param>
    /// <param name="ReportError">Why the Port report could not be written (the outcome was recorded without it); null when it
    /// was, or there was none.</param>
    public readonly record struct FinishResult(long Failures, string? ReportError);

    public async Task<FinishResult> FinishAsync(FinishRequest request)
    {
        var entry = request.Entry;
        var report = request.Report?.ToStreamFields() ?? [];
        var args = new List<RedisValue>(13 + (report.Length * 2) + (request.Fields.Count * 2))
        {
            request.Mode switch
            {
                FinishMode.Delivered => "delivered",
                FinishMode.Retry => "retry",
                FinishMode.Reschedule => "reschedule",
                FinishMode.DeadLetter => "deadletter",
                _ => "skip",
            },
            request.StreamId ?? "",
            RedisKeys.ConsumerGroup,
            entry.DeliveryId,
            request.LeaseToken,
            request.Now.ToUnixTimeMilliseconds(),
            request.DueAt?.ToUnixTimeMilliseconds() ?? 0,
            entry.Target,
            (long)request.Retention.TotalSeconds,
            request.AttemptJson ?? "",
            request.PauseThreshold,
            request.PauseProbeAt.ToUnixTimeMilliseconds(),
            report.Length * 2,
        };
        foreach (var field in report)
        {
            args.Add(field.Name);
            args.Add(field.Value);
        }
        foreach (var (name, value) in request.Fields)
        {
            args.Add(name);
            args.Add(value);
        }
        RedisKey[] keys = [
            RedisKeys.Delivery(entry.DeliveryId), RedisKeys.Lease(entry.DeliveryId), RedisKeys.Stream, RedisKeys.RetrySchedule,
            RedisKeys.DeadLetters, RedisKeys.Attempts(entry.DeliveryId), RedisKeys.TargetFailures, RedisKeys.PausedTargets,
            RedisKeys.RetryClaims, RedisKeys.PortReports,
        ];
        if (!string.IsNullOrEmpty(entry.RunId))
        {
            keys = [.. keys, RedisKeys.RunIndex(entry.RunId)];
        }
        var result = (RedisResult[])(await Db.ScriptEvaluateAsync(FinishScript, keys, [.. args]))!;
        var reportError = (string?)result[1];
        return new FinishResult((long)result[0], string.IsNullOrEmpty(reportError) ? null : reportError);
    }

    /// <summary>
    /// Claims up to <paramref name="count"/> due retries for <paramref name="lease"/>. Reclaimed: an earlier
    /// claim of the same slot never finished (its replica stopped or crashed).
    /// </summary>
    public async Task<IReadOnlyList<(string DeliveryId, bool Reclaimed)>> ClaimDueRetriesAsync(DateTimeOffset now, TimeSpan lease, int count)
    {
        var batch = RedisKeys.RetryClaimBatch(Guid.NewGuid().ToString("N"));
        var leaseUntil = (now + lease).ToUnixTimeMilliseconds();
        RedisResult[] result;
        try
        {
            result = (RedisResult[])(await Db.ScriptEvaluateAsync(ClaimDueScript, [RedisKeys.RetrySchedule, RedisKeys.RetryClaims, batch],
                [now.ToUnixTimeMilliseconds(), leaseUntil, count, (long)lease.TotalMilliseconds]))!;
        }
        catch
        {
            // The script may have run with its reply lost. Sent on the same connection, the release runs after it. Any
            // failure, not only one known as Redis's: the client has failed calls with exceptions nobody listed.
            await ReleaseClaimBatchAsync(batch, now, leaseUntil);
            throw;
        }
        if (result.Length > 0)
        {
            // The reply came: nothing to undo. Else the batch would stay for the lease.
            _ = Db.KeyDeleteAsync(batch, CommandFlags.FireAndForget);
        }
        var due = new (string, bool)[result.Length / 2];
        for (var i = 0; i < due.Length; i++)
        {
            due[i] = ((string)result[2 * i]!, (int)result[(2 * i) + 1] == 1);
        }
        return due;
    }

    private async Task ReleaseClaimBatchAsync(string batch, DateTimeOffset now, long leaseUntil)
    {
        try
        {
            await Db.ScriptEvaluateAsync(ReleaseClaimBatchScript, [RedisKeys.RetrySchedule, RedisKeys.RetryClaims, batch],
                [now.ToUnixTimeMilliseconds(), leaseUntil]);
        }
        catch (Exception ex) when (RedisFailures.IsFailure(ex))
        {
            // Best effort: unreleased, the slots wait out the lease and their next claim counts as a crash, as before.
        }
    }

    /// <summary>Rebuilds the entry of a scheduled retry from its record, or null when the record is gone or damaged.</summary>
    public async Task<DeliveryEntry?> LoadEntryAsync(string deliveryId)
    {
        HashEntry[] fields;
        try
        {
            fields = await Db.HashGetAllAsync(RedisKeys.Delivery(deliveryId));
        }
        catch (RedisServerException ex) when (RedisFailures.IsWrongType(ex))
        {
            // Not a hash: nothing in it can be delivered. Thrown, it failed every round of every Dispatcher at this slot,
            // before any new run was read; the slot's claim was released, and it was due again at once.
            return null;
        }
        return DeliveryEntry.FromFields(fields.Select(f => new KeyValuePair<RedisValue, RedisValue>(f.Name, f.Value))
            .Append(new(DeliveryEntry.Fields.DeliveryId, deliveryId)));
    }

    /// <summary>
    /// Undoes claims of schedule slots that were never started: due again at once, and not counted as crashed
    /// attempts. Best effort (Redis may be what failed).
    /// </summary>
    public async Task ReleaseRetryClaimsAsync(IEnumerable<string> deliveryIds, DateTimeOffset now)
    {
        RedisValue[] args = [now.ToUnixTimeMilliseconds(), .. deliveryIds.Select(id => (RedisValue)id)];
        if (args.Length == 1)
        {
            return;
        }
        try
        {
            await Db.ScriptEvaluateAsync(ReleaseClaimsScript, [RedisKeys.RetrySchedule, RedisKeys.RetryClaims], args);
        }
        catch (Exception ex) when (RedisFailures.IsFailure(ex))
        {
        }
    }

    /// <summary>Drops a schedule slot whose record has vanished (nothing left to deliver).</summary>
    public Task RemoveFromScheduleAsync(string deliveryId) =>
        Db.ScriptEvaluateAsync(RemoveFromScheduleScript, [RedisKeys.RetrySchedule, RedisKeys.RetryClaims], [deliveryId]);

    /// <summary>Acknowledges and deletes a stream entry the Dispatcher cannot read, in one step.</summary>
    public Task RemoveMalformedEntryAsync(RedisValue streamId) =>
        Db.ScriptEvaluateAsync(RemoveMalformedEntryScript, [RedisKeys.Stream], [RedisKeys.ConsumerGroup, streamId]);

    /// <summary>Puts a dead letter back into the stream under the same delivery id.</summary>
    public async Task<ReplayOutcome> ReplayAsync(string deliveryId, DateTimeOffset now)
    {
        var result = await Db.ScriptEvaluateAsync(ReplayScript,
            [RedisKeys.DeadLetters, RedisKeys.Delivery(deliveryId), RedisKeys.Stream, RedisKeys.Attempts(deliveryId)],
            [deliveryId, now.ToUnixTimeMilliseconds(), RedisKeys.WakeChannel, MaxAttemptLog]);
        return result.IsNull ? ReplayOutcome.NotADeadLetter
            : result.Resp2Type == ResultType.Integer ? ReplayOutcome.NotReplayable
            : ReplayOutcome.Replayed;
    }

    /// <summary>Discards a dead letter: out of the index, body dropped, record kept for <paramref name="retention"/>.</summary>
    /// <returns>False when <paramref name="deliveryId"/> is not a dead letter (nothing changed).</returns>
    public async Task<bool> DiscardAsync(string deliveryId, DateTimeOffset now, TimeSpan retention)
    {
        RedisKey[] keys = [RedisKeys.DeadLetters, RedisKeys.Delivery(deliveryId), RedisKeys.Attempts(deliveryId)];
        RedisValue runId;
        try
        {
            runId = await Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.RunId);
        }
        catch (RedisServerException ex) when (RedisFailures.IsWrongType(ex))
        {
            runId = RedisValue.Null;
        }
        if (!runId.IsNullOrEmpty)
        {
            keys = [.. keys, RedisKeys.RunIndex(runId!)];
        }
        return (long)await Db.ScriptEvaluateAsync(DiscardScript, keys, [deliveryId, now.ToUnixTimeMilliseconds(), (long)retention.TotalSeconds]) == 1;
    }
}
