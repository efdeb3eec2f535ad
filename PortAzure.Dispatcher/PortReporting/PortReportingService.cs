using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Options;
using PortAzure.Diagnostics;
using PortAzure.Dispatcher.Delivery;
using PortAzure.Dispatcher.Diagnostics;
using PortAzure.Redis;
using PortAzure.Security;
using StackExchange.Redis;

namespace PortAzure.Dispatcher.PortReporting;

/// <summary>
/// Sends the reports that finished deliveries left in <see cref="RedisKeys.PortReports"/>, each with its
/// own retries, apart from the delivery slots. A report leaves the stream only once it was sent or given
/// up on. One still unsent when its reporter stops is handed back to the stream for any Dispatcher; one whose
/// reporter crashed stays pending and is taken over after <see cref="DispatcherOptions.PortReportReclaimSeconds"/>.
/// </summary>
internal sealed partial class PortReportingService(
    IConnectionMultiplexer redis,
    PortReporter reporter,
    PortApiClient client,
    ConsumerIdentity identity,
    IOptionsMonitor<DispatcherOptions> options,
    IOptionsMonitor<PortOptions> portOptions,
    DispatcherMetrics metrics,
    TimeProvider timeProvider,
    ILogger<PortReportingService> logger) : BackgroundService
{
    // Reports held at once (sending or waiting to retry), and calls to Port at once (DispatcherOptions.PortMaxConcurrentCalls,
    // at most MaxHeld; read at start). Waiting reports do not take a call:
    // reports that fail each for its own reason (runs Port's credentials cannot reach) wait beside the others, which
    // still flow, and each one Port takes lets the waiting ones spend an attempt. Only when more than MaxHeld fail in a
    // row with none taken does reporting wait, which then looks the same as an outage (and is reported as one).
    internal const int MaxHeld = 256;

    // A report that waited longer than this for a call is touched before it (see SendAsync).
    private static readonly TimeSpan CallQueueTouch = TimeSpan.FromSeconds(10);

    /// <summary>
    /// The longest time between two touches of a report still being retried, with a margin: the longest wait (a 429's
    /// Retry-After), the longest untouched wait for a call, then a token call and the log call (and the read of a 409's body).
    /// About 6 min at the defaults.
    /// </summary>
    internal static TimeSpan MinSafeReclaim(DispatcherOptions options) =>
        PortApiClient.MaxThrottle + CallQueueTouch + (2 * TimeSpan.FromSeconds(options.PortRequestTimeoutSeconds)) + PortApiClient.LockedAnswerReadTime
        + TimeSpan.FromSeconds(20);

    // A full Redis refuses the group's creation (at a first start, the group not there yet): one line every 10 s, as the
    // delivery worker's, not a warning per try.
    private readonly LogThrottle _outOfMemoryLines = new(timeProvider, TimeSpan.FromSeconds(10));

    // The report's first write time (Unix ms), added by a hand-back.
    private const string SinceField = "since";
    private static readonly TimeSpan CredentialsRefusedWait = TimeSpan.FromSeconds(60);

    // A call to Port under way at the stop gets this long to finish: cut off, it may have reached Port anyway and
    // would then show twice. Short, because the host's shutdown timeout is mostly the delivery worker's.
    private static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(3);

    // Retries of the acknowledgement of a sent report: one left pending is sent again when taken over.
    private static readonly TimeSpan[] RemoveBackoff =
    [
        TimeSpan.FromSeconds(0.5), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(4), TimeSpan.FromSeconds(8),
    ];

    private static readonly TimeSpan[] Backoff =
    [
        TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(15),
        TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(60), TimeSpan.FromSeconds(120),
    ];

    // Both scripts act only while the entry is still pending for this reporter (ARGV: 1 group, 2 entry id, 3 this
    // consumer): another may have taken it over after a wait longer than the reclaim time, and be sending it or
    // have sent and removed it. The hand-back's ARGV 4.. are the entry's field/value pairs, and its KEYS[2] the delivery's
    // record, which follows the report to its new entry if it names this one (not if a newer report was written since).
    // The XACK comes first: it needs no memory, and Redis over maxmemory refuses the XADD (denyoom) only while a script has
    // written nothing, so a Dispatcher stopped on a full Redis still hands its unsent reports back. What could fail after it
    // is checked before it: Lua unpacks no more than about 8,000 values into a call, and an entry with more fields (not the
    // relay's: a report has a dozen) is left pending for the takeover, which sends it without handing it on; acknowledged,
    // with its copy never written, it would stay in the stream unread, lost.
    private static readonly string HandBackScript = $$"""
        if #ARGV > 1000 then
          return 0
        end
        local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3])
        if #mine == 0 then
          return 0
        end
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        local added = redis.call('XADD', KEYS[1], 'MAXLEN', '~', {{RedisKeys.PortReportsMaxLength}}, '*', unpack(ARGV, 4))
        if KEYS[2] and redis.pcall('HGET', KEYS[2], '{{DeliveryRecord.PortReportEntry}}') == ARGV[2] then
          redis.pcall('HSET', KEYS[2], '{{DeliveryRecord.PortReportEntry}}', added)
        end
        redis.call('XDEL', KEYS[1], ARGV[2])
        return 1
        """;

    // Ends a report on its delivery's record (GET /api/deliveries/{id}'s portReport), if the record still names it: an
    // earlier report (a dead letter's, ended after its replay's was written) leaves the newer one's state alone, and a
    // report ends once however often a call is retried after a lost reply. No record (expired, or a damaged report without
    // a delivery id) is not created again; pcall: a damaged record must not keep the report in the stream.
    // The removal settles whatever its XACK answers: an entry trimmed during the call to Port and reaped since by a
    // takeover (Redis 7's XAUTOCLAIM drops it from the pending list) was still sent, and its record must not read trimmed.
    private static readonly string SettleFunction = $$"""
        local function settle(record, entry, outcome, now)
          if not record or redis.pcall('HGET', record, '{{DeliveryRecord.PortReportEntry}}') ~= entry then
            return
          end
          redis.pcall('HDEL', record, '{{DeliveryRecord.PortReportEntry}}')
          redis.pcall('HSET', record, '{{DeliveryRecord.PortReport}}', outcome, '{{DeliveryRecord.PortReportAt}}', now)
        end
        """;

    // KEYS: 1 report stream, 2 the delivery's record (absent for a damaged report). ARGV: 1 group, 2 entry id, 3 outcome, 4 now ms
    private static readonly string RemoveScript = $$"""
        {{SettleFunction}}
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        settle(KEYS[2], ARGV[2], ARGV[3], ARGV[4])
        redis.call('XDEL', KEYS[1], ARGV[2])
        return 1
        """;

    // KEYS: 1 report stream, 2 the delivery's record. ARGV: 1 group, 2 entry id, 3 this consumer, 4 now ms
    // Returns 1: still this reporter's; 0: taken over; -1: the entry is gone, trimmed away (the stream keeps about
    // the newest PortReportsMaxLength reports, and the oldest are the ones waiting longest).
    private static readonly string TouchScript = $$"""
        {{SettleFunction}}
        local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3])
        if #mine == 0 then
          -- Taken over (and perhaps sent and removed by the other reporter since): a trimmed entry stays pending here.
          return 0
        end
        if #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then
          if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
            settle(KEYS[2], ARGV[2], 'trimmed', ARGV[4])
          end
          return -1
        end
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
        return 1
        """;

    // Sends under way, by entry id: one this reporter reclaims from itself (a wait longer than the reclaim
    // time) is not started a second time.
    private readonly ConcurrentDictionary<string, Task> _sending = new(StringComparer.Ordinal);
    // Not disposed: a send's continuation may release them after ExecuteAsync has returned.
    private readonly SemaphoreSlim _slots = new(MaxHeld, MaxHeld);
    // Made when the reporting starts, not here: the host builds its services before it validates the options at start,
    // and a read here would stop the start with this section's errors alone.
    private SemaphoreSlim _calls = null!;
    private readonly CancellationTokenSource _callsStop = new();
    private RedisValue _claimCursor = "0-0";
    // A read or takeover failed: its reply may have been lost after Redis had made this reporter the owner of the entries,
    // which then waited PortReportReclaimSeconds (15 min by default) for a takeover. The next round reads them back (as
    // the first does under a configured consumer name, which may have held reports before a restart).
    private bool _mayHoldUnread;
    // The monotonic clock, as the delivery worker's: a wall clock stepped back held the takeovers back for the step.
    private long? _lastClaimAt;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        _calls = new(options.CurrentValue.PortMaxConcurrentCalls, options.CurrentValue.PortMaxConcurrentCalls);
        if (!reporter.Enabled)
        {
            // Nothing writes reports without Port's credentials, so there is nothing to send.
            return;
        }
        if (portOptions.CurrentValue.ApiBaseUrl is { Scheme: "http", IsLoopback: false } plain)
        {
            // Allowed (a proxy inside the cluster may end TLS), but the token call carries the client secret.
            Log.PlainHttpApi(logger, plain.Host);
        }
        if (MinSafeReclaim(options.CurrentValue) is var safe && options.CurrentValue.PortReportReclaimSeconds < safe.TotalSeconds)
        {
            // Allowed (tests take over in seconds), but in production a report still being retried would be taken over
            // and sent twice.
            Log.ReclaimTooShort(logger, options.CurrentValue.PortReportReclaimSeconds, Math.Ceiling(safe.TotalMinutes * 10) / 10);
        }
        using var stopCalls = stoppingToken.Register(() => _callsStop.CancelAfter(StopGrace));
        // A name given in configuration is this reporter's across restarts: what it held when it stopped (a crash, Redis
        // away at its stop) is still pending for it, and is read back now rather than taken over after the reclaim time.
        _mayHoldUnread = options.CurrentValue.ConsumerName is not null;
        var groupReady = false;
        var errorBackoff = new ErrorBackoff(timeProvider);
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                if (!groupReady)
                {
                    await EnsureGroupAsync();
                    groupReady = true;
                }
                await _slots.WaitAsync(stoppingToken);
                _slots.Release();
                var started = await FeedAsync(stoppingToken);
                errorBackoff.Reset();
                if (started == 0)
                {
                    await Task.Delay(TimeSpan.FromSeconds(options.CurrentValue.PollIntervalSeconds), timeProvider, stoppingToken);
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
            catch (RedisServerException ex) when (ex.Message.StartsWith("NOGROUP", StringComparison.Ordinal))
            {
                groupReady = false;
                QueueFailed(ex);
            }
            catch (Exception ex)
            {
                // Redis away: back off and go on; a faulted BackgroundService would stop the Dispatcher.
                QueueFailed(ex);
                if (!await errorBackoff.WaitAsync(stoppingToken))
                {
                    break;
                }
            }
        }
        // Waits end at the stop, calls under way within StopGrace; their reports are handed back.
        await Task.WhenAll(_sending.Values);
        if (_mayHoldUnread && groupReady)
        {
            await HandBackUnreadAsync();
        }
    }

    /// <summary>
    /// At the stop, after a read whose reply may have been lost that no round read back since: the reports pending for
    /// this reporter are handed back with the unsent ones, not left for the takeover after
    /// <see cref="DispatcherOptions.PortReportReclaimSeconds"/>. (One whose removal failed after it was sent is among them,
    /// and is sent again at once instead of after that takeover.) At most as many as there are free slots (256 at rest):
    /// any beyond them wait for the takeover.
    /// </summary>
    private async Task HandBackUnreadAsync()
    {
        List<StreamEntry> entries;
        try
        {
            (entries, _) = await ReadOwnUnsentAsync(redis.GetDatabase());
        }
        catch (Exception ex)
        {
            // Left pending: taken over after the reclaim time.
            QueueFailed(ex);
            return;
        }
        foreach (var entry in entries)
        {
            if (PortReport.FromStreamEntry(entry) is { } report)
            {
                await HandBackAsync(entry, report);
            }
        }
    }

    public override void Dispose()
    {
        // The base first: it cancels the stopping token, whose callback still uses _callsStop.
        base.Dispose();
        _callsStop.Dispose();
    }

    private async Task EnsureGroupAsync()
    {
        var db = redis.GetDatabase();
        await ConsumerGroup.EnsureAsync(db, RedisKeys.PortReports, RedisKeys.PortReportersGroup);
        await ConsumerGroup.RemoveStaleConsumersAsync(db, RedisKeys.PortReports, RedisKeys.PortReportersGroup, identity.Name,
            TimeSpan.FromSeconds(options.CurrentValue.PortReportReclaimSeconds));
    }

    private async Task<int> FeedAsync(CancellationToken stoppingToken)
    {
        var opts = options.CurrentValue;
        var db = redis.GetDatabase();
        var entries = new List<StreamEntry>();
        // Read back or taken over (not new): their spans say so, as their tries start again from 1 here.
        var takenOver = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            if (_mayHoldUnread)
            {
                (entries, var complete) = await ReadOwnUnsentAsync(db);
                _mayHoldUnread = !complete;
                takenOver.UnionWith(entries.Select(e => e.Id.ToString()));
            }
            if ((_lastClaimAt is not { } last || timeProvider.GetElapsedTime(last) >= TimeSpan.FromSeconds(opts.ClaimIntervalSeconds))
                && _slots.CurrentCount > entries.Count)
            {
                _lastClaimAt = timeProvider.GetTimestamp();
                var claim = await db.StreamAutoClaimAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, identity.Name,
                    (long)(opts.PortReportReclaimSeconds * 1000), _claimCursor, _slots.CurrentCount - entries.Count);
                _claimCursor = claim.NextStartId;
                entries.AddRange(claim.ClaimedEntries);
                takenOver.UnionWith(claim.ClaimedEntries.Select(e => e.Id.ToString()));
                if (claim.DeletedIds.Length > 0)
                {
                    // Reports trimmed away while pending (Redis 7 lists them here and drops them from the pending list, whatever
                    // their idle time: a live reporter's waiting report too, which its next touch then finds gone, as taken over).
                    // Their deliveries are unknown here: their records, which still name them, read as trimmed.
                    metrics.PortReport("trimmed", claim.DeletedIds.Length);
                    Log.Trimmed(logger, claim.DeletedIds.Length);
                }
            }
            if (_slots.CurrentCount > entries.Count)
            {
                entries.AddRange(await db.StreamReadGroupAsync(RedisKeys.PortReports, RedisKeys.PortReportersGroup, identity.Name, ">",
                    _slots.CurrentCount - entries.Count));
            }
        }
        catch
        {
            // The call that failed may have given this reporter entries it never saw (a reply lost), and what the calls
            // before it read is dropped here: all of them are pending for this reporter.
            _mayHoldUnread = true;
            throw;
        }
        // Redis 6.2 returns reclaimed entries that were trimmed away as nil, still pending; 7.x drops them. An entry read back
        // from this reporter's own pending list is started once even if a takeover in the same round returned it too.
        entries = [.. entries.Where(e => !e.IsNull && !_sending.ContainsKey(e.Id.ToString())).DistinctBy(e => e.Id)];
        foreach (var entry in entries)
        {
            // Not cancelled by the stop: the entries are this reporter's now, and a slot is free for each (at most
            // CurrentCount were read). Started at the stop, a report is handed back at once.
            await _slots.WaitAsync(CancellationToken.None);
            var id = entry.Id.ToString();
            var send = SendAndRemoveAsync(entry, takenOver.Contains(id), stoppingToken);
            _sending[id] = send;
            _ = send.ContinueWith(done =>
            {
                _sending.TryRemove(id, out _);
                _slots.Release();
            }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
        return entries.Count;
    }

    /// <summary>
    /// The entries pending for this reporter that it is not sending, up to the free slots: its own pending list from
    /// the start (<see cref="ConsumerGroup.ReadOwnPendingAsync"/>; a touch of every report it holds). One trimmed away is
    /// left to the takeover, which says it is lost.
    /// </summary>
    /// <returns>The entries, and whether there were no more.</returns>
    private async Task<(List<StreamEntry> Entries, bool Complete)> ReadOwnUnsentAsync(IDatabase db)
    {
        // Taken before the read: a send that ends (and removes its entry) while the read is under way is still known.
        var sending = _sending.Keys.ToHashSet(StringComparer.Ordinal);
        var (found, stoppedAt) = await ConsumerGroup.ReadOwnPendingAsync(db, RedisKeys.PortReports, RedisKeys.PortReportersGroup, identity.Name,
            "0-0", sending, _slots.CurrentCount, MaxHeld);
        return (found, stoppedAt is null);
    }

    private async Task SendAndRemoveAsync(StreamEntry entry, bool takenOver, CancellationToken stoppingToken)
    {
        var report = PortReport.FromStreamEntry(entry);
        // How the report ended, as the metric counts it and its delivery's record shows it.
        var outcome = "malformed";
        if (report is null)
        {
            Log.Malformed(logger, entry.Id.ToString());
        }
        else
        {
            switch (await SendAsync(report, entry.Id, WrittenAt(entry), takenOver, stoppingToken))
            {
                case SendOutcome.Sent:
                    outcome = "sent";
                    break;
                case SendOutcome.AlreadyEnded:
                    outcome = "already_ended";
                    break;
                case SendOutcome.GivenUp:
                    outcome = "failed";
                    break;
                case SendOutcome.Stopped:
                    await HandBackAsync(entry, report);
                    return;
                case SendOutcome.TakenOver:
                    Log.TakenOver(logger, report.DeliveryId);
                    return;
                case SendOutcome.Trimmed:
                    metrics.PortReport("trimmed");
                    Log.TrimmedWhileWaiting(logger, report.DeliveryId, report.RunId);
                    return;
                default:
                    throw new UnreachableException();
            }
            metrics.PortReport(outcome);
        }
        await RemoveAsync(entry.Id, report?.DeliveryId, outcome, stoppingToken);
    }

    /// <param name="outcome">How the report ended, for its delivery's record.</param>
    private async Task RemoveAsync(RedisValue entryId, string? deliveryId, string outcome, CancellationToken stoppingToken)
    {
        RedisKey[] keys = deliveryId is null ? [RedisKeys.PortReports] : [RedisKeys.PortReports, RedisKeys.Delivery(deliveryId)];
        for (var attempt = 0; ; attempt++)
        {
            try
            {
                await redis.GetDatabase().ScriptEvaluateAsync(RemoveScript, keys,
                    [RedisKeys.PortReportersGroup, entryId, outcome, timeProvider.GetUtcNow().ToUnixTimeMilliseconds()]);
                return;
            }
            catch (Exception ex)
            {
                QueueFailed(ex);
                if (attempt >= RemoveBackoff.Length || stoppingToken.IsCancellationRequested)
                {
                    // Left pending: taken over later, at worst one more log line in Port.
                    return;
                }
            }
            try
            {
                await Task.Delay(RemoveBackoff[attempt], timeProvider, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                // One last try below, at the stop.
            }
        }
    }

    /// <summary>
    /// Gives an unsent report back to the stream at the stop, as a new entry any reporter reads at once:
    /// left pending, it would wait <see cref="DispatcherOptions.PortReportReclaimSeconds"/> for a takeover.
    /// </summary>
    private async Task HandBackAsync(StreamEntry entry, PortReport report)
    {
        try
        {
            // The new entry keeps the report's first write time, so that hand-backs do not restart its retry age.
            NameValueEntry[] fields = [.. entry.Values.Where(v => v.Name != SinceField), new(SinceField, WrittenAt(entry).ToUnixTimeMilliseconds())];
            var args = ScriptArguments.WithFields(fields, RedisKeys.PortReportersGroup, entry.Id, identity.Name);
            if ((int)await redis.GetDatabase().ScriptEvaluateAsync(HandBackScript, [RedisKeys.PortReports, RedisKeys.Delivery(report.DeliveryId)], args) == 1)
            {
                Log.HandedBack(logger, report.DeliveryId);
            }
        }
        catch (Exception ex)
        {
            // Left pending: taken over after the reclaim time.
            QueueFailed(ex);
        }
    }

    private enum SendOutcome
    {
        /// <summary>Port took it: the report leaves the stream.</summary>
        Sent,

        /// <summary>Port refused a final status, the run having one already: the report leaves the stream.</summary>
        AlreadyEnded,

        /// <summary>Given up on: the report leaves the stream.</summary>
        GivenUp,

        /// <summary>Stopped first: handed back.</summary>
        Stopped,

        /// <summary>Another reporter took it over during a wait: left to that one.</summary>
        TakenOver,

        /// <summary>Trimmed from the stream during a wait: lost.</summary>
        Trimmed,
    }

    /// <param name="writtenAt">When the report was first written: its age bounds the retries.</param>
    /// <param name="takenOver">Read back or taken over from another reporter: its span says so.</param>
    private async Task<SendOutcome> SendAsync(PortReport report, RedisValue entryId, DateTimeOffset writtenAt, bool takenOver, CancellationToken stoppingToken)
    {
        long? sentBeforePreviousTry = null;
        bool PastTheRetryAge(DateTimeOffset at) => at - writtenAt > TimeSpan.FromHours(options.CurrentValue.Retry.MaxAgeHours);
        for (int tries = 1, attempt = 0, outageWaits = 0; ; tries++)
        {
            // No new call once stopping: one cut off after reaching Port would show twice.
            if (stoppingToken.IsCancellationRequested)
            {
                return SendOutcome.Stopped;
            }
            var queuedAt = timeProvider.GetUtcNow();
            // Checked before each call too, not only after a failed one: a wait (up to 2 min in an outage) that crossed the
            // age ended in one more call, which sent a report past it; so did a takeover's first call of an old report.
            if (PastTheRetryAge(queuedAt))
            {
                // No call, but the run's trace still ends with its report: a span that says it was given up.
                using var givenUp = StartReportActivity(report, tryNumber: null, takenOver);
                givenUp?.SetTag(PortAzureDiagnostics.Tags.Outcome, "given_up");
                givenUp?.SetTag(PortAzureDiagnostics.Tags.Reason, GivenUpFor.PastTheRetryAge);
                givenUp?.SetStatus(ActivityStatusCode.Error, "given_up");
                Log.Failed(logger, report.DeliveryId, report.RunId, tries - 1);
                return SendOutcome.GivenUp;
            }
            try
            {
                await _calls.WaitAsync(stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return SendOutcome.Stopped;
            }
            var triedAt = timeProvider.GetUtcNow();
            var sentBefore = client.SentCount;
            PortCallResult result;
            Activity? activity = null;
            try
            {
                // The wait for a call can be long (many reports held, Port slow): the report may have been taken over
                // meanwhile, and must not be sent by both reporters. After a long one it is touched anew before the call.
                if (triedAt - queuedAt > CallQueueTouch && await TouchAsync(entryId, report.DeliveryId) is { } leftWhileQueued)
                {
                    return leftWhileQueued;
                }
                activity = StartReportActivity(report, tries, takenOver);
                result = await client.SendLogAsync(report, _callsStop.Token);
            }
            catch (OperationCanceledException) when (_callsStop.IsCancellationRequested)
            {
                activity?.Dispose();
                return SendOutcome.Stopped;
            }
            catch (Exception ex)
            {
                // Any failure (network, a malformed answer) is this report's problem only: retried,
                // never allowed to end the sender loop.
                Log.CallFailed(logger, ex, report.DeliveryId);
                result = PortCallResult.RetryLater;
            }
            finally
            {
                _calls.Release();
            }
            var outcome = OutcomeName(result);
            activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, outcome);
            // A try that made no call did not fail: its span says why in its outcome, without an error.
            if (result is not PortCallResult.Sent and not PortCallResult.AlreadyEnded and not PortCallResult.NotTried)
            {
                activity?.SetStatus(ActivityStatusCode.Error, outcome);
            }
            if (result is PortCallResult.Sent or PortCallResult.AlreadyEnded)
            {
                // Written inside the span, as the give-up's below: the line carries the run's trace id.
                if (result == PortCallResult.Sent)
                {
                    Log.Sent(logger, report.DeliveryId, report.RunId);
                }
                else
                {
                    Log.AlreadyEnded(logger, report.DeliveryId, report.RunId, report.TerminationStatus);
                }
                activity?.Dispose();
                return result == PortCallResult.Sent ? SendOutcome.Sent : SendOutcome.AlreadyEnded;
            }
            // A failure spends one of the report's attempts only if Port took another report since this one's previous try
            // began: Port is up, so the failure is this report's. Otherwise every report is failing (Port or its token
            // endpoint down, the relay's credentials lacking a permission): the report waits without spending its attempts,
            // as a delivery waits for Azure. Counted per try, an outage of ~4 min lost every report.
            var portUp = client.SentCount > (sentBeforePreviousTry ?? sentBefore);
            if (result != PortCallResult.NotTried)
            {
                sentBeforePreviousTry = sentBefore;
            }
            // However it fails or waits, a report is not retried past the retry age (a takeover starts its attempts again).
            var givenUpFor = result == PortCallResult.Rejected ? GivenUpFor.Rejected
                : PastTheRetryAge(triedAt) ? GivenUpFor.PastTheRetryAge
                : result == PortCallResult.RetryLater && portUp && attempt >= Backoff.Length ? GivenUpFor.AttemptsSpent
                : null;
            if (givenUpFor is not null)
            {
                // The last try's span says why it was the last; an error even when it made no call (not_tried).
                activity?.SetTag(PortAzureDiagnostics.Tags.Reason, givenUpFor);
                activity?.SetStatus(ActivityStatusCode.Error, outcome);
                Log.Failed(logger, report.DeliveryId, report.RunId, tries);
                activity?.Dispose();
                return SendOutcome.GivenUp;
            }
            // Ended here: the wait below is not part of the try.
            activity?.Dispose();
            TimeSpan wait;
            if (result == PortCallResult.RetryLater && !portUp)
            {
                wait = Backoff[Math.Min(outageWaits++, Backoff.Length - 1)];
            }
            else if (result == PortCallResult.NotTried)
            {
                // The token call of another send failed moments ago: this one made no call, so no attempt is spent and no
                // outage marked. Its waits still grow as an outage's do: while the token endpoint stays down, every report
                // tried only finds the pause again, and each coming back every 5 s would be hundreds of tries (and spans)
                // per minute for nothing.
                var grown = Backoff[Math.Min(outageWaits++, Backoff.Length - 1)];
                wait = (grown > PortApiClient.TokenFailurePause ? grown : PortApiClient.TokenFailurePause)
                    + TimeSpan.FromMilliseconds(Random.Shared.Next(100, 1000));
            }
            else if (result == PortCallResult.CredentialsRefused)
            {
                // Nothing wrong with the report, and no outage that ends by itself: it waits without spending its
                // attempts until Port takes the relay's credentials again (a secret rotation under way, a typo fixed).
                wait = CredentialsRefusedWait;
            }
            else if (result == PortCallResult.Throttled)
            {
                // Port is up and said when to come back: the report waits that long, without spending its attempts
                // (16 reports each spending theirs at a rate limit was how reports got lost with Port up). A spread
                // of up to a second keeps the waiting reports from calling in one burst.
                // Bounded again here: a clock stepped back would otherwise stretch the wait by the step.
                var until = client.Throttled ? client.ThrottledUntil - timeProvider.GetUtcNow() : TimeSpan.Zero;
                wait = (until <= TimeSpan.Zero ? TimeSpan.Zero : until > PortApiClient.MaxThrottle ? PortApiClient.MaxThrottle : until)
                    + TimeSpan.FromMilliseconds(Random.Shared.Next(100, 1000));
            }
            else
            {
                wait = Backoff[attempt++];
            }
            // Failed or throttled with none taken since: nothing reaches Port, and an operator learns of it (a Warning, /health
            // Degraded; for a throttle, one 2207 per wait said only that a limit was met). Marked when the try ended, not
            // began: a try can take up to ~45 s while Port times out (a token call, the POST). The wait is passed on: tries a
            // long Retry-After apart still add up to one outage.
            if (!portUp && result is PortCallResult.RetryLater or PortCallResult.Throttled && client.Outage.Failed(wait) is { } since)
            {
                Log.PortFailingForAll(logger, since, options.CurrentValue.Retry.MaxAgeHours);
            }
            try
            {
                // Already stopping: cancelled at once.
                await Task.Delay(wait, timeProvider, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return SendOutcome.Stopped;
            }
            if (await TouchAsync(entryId, report.DeliveryId) is { } leftWhileWaiting)
            {
                return leftWhileWaiting;
            }
        }
    }

    /// <summary>Why a report was given up, on its last span.</summary>
    private static class GivenUpFor
    {
        public const string Rejected = "rejected";
        public const string AttemptsSpent = "attempts_spent";
        public const string PastTheRetryAge = "past_retry_age";
    }

    private static string OutcomeName(PortCallResult result) => result switch
    {
        PortCallResult.Sent => "sent",
        PortCallResult.AlreadyEnded => "already_ended",
        PortCallResult.Rejected => "rejected",
        PortCallResult.CredentialsRefused => "credentials_refused",
        PortCallResult.Throttled => "throttled",
        PortCallResult.NotTried => "not_tried",
        _ => "retry_later",
    };

    /// <summary>One try of a report, in the trace of the attempt that decided it; Port's calls are its children.</summary>
    /// <param name="tryNumber">Null for a span that makes no try (a report given up before its call).</param>
    /// <param name="takenOver">Tagged <c>portazure.reclaimed</c>: its tries are numbered again from 1 here.</param>
    private static Activity? StartReportActivity(PortReport report, int? tryNumber, bool takenOver)
    {
        ActivityContext.TryParse(report.TraceParent, report.TraceState, out var parent);
        var activity = PortAzureDiagnostics.ActivitySource.StartActivity("report to Port", ActivityKind.Internal, parent);
        if (activity is null)
        {
            return null;
        }
        activity.SetTag(PortAzureDiagnostics.Tags.DeliveryId, report.DeliveryId);
        activity.SetTag(PortAzureDiagnostics.Tags.RunId, report.RunId);
        if (tryNumber is { } number)
        {
            activity.SetTag(PortAzureDiagnostics.Tags.Attempt, number);
        }
        if (takenOver)
        {
            activity.SetTag(PortAzureDiagnostics.Tags.Reclaimed, true);
        }
        return activity;
    }

    /// <summary>
    /// When the report was first written: the time its hand-back kept (<see cref="SinceField"/>), else its entry id's
    /// (Redis's clock at the XADD).
    /// </summary>
    private DateTimeOffset WrittenAt(StreamEntry entry)
    {
        var id = entry.Id.ToString();
        var dash = id.IndexOf('-', StringComparison.Ordinal);
        // An id Redis wrote always parses; a damaged one ages as if written now.
        var entryWritten = UnixMilliseconds(dash > 0 ? id[..dash] : id) ?? timeProvider.GetUtcNow();
        // Never later than the entry itself: a damaged time in the future would keep the report young for ever.
        return entry[SinceField] is { IsNullOrEmpty: false } since && UnixMilliseconds((string)since!) is { } sinceAt && sinceAt < entryWritten
            ? sinceAt
            : entryWritten;
    }

    private static DateTimeOffset? UnixMilliseconds(string text) =>
        long.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var ms)
            && ms <= DateTimeOffset.MaxValue.ToUnixTimeMilliseconds()
            ? DateTimeOffset.FromUnixTimeMilliseconds(ms)
            : null;

    /// <summary>
    /// Resets the entry's idle time, so that a report this reporter is still retrying is not taken over as
    /// the report of a stopped one, however long Port's API keeps it waiting.
    /// </summary>
    /// <returns>Null while the report is still this reporter's; else how it left: taken over by another, or trimmed away.</returns>
    private async Task<SendOutcome?> TouchAsync(RedisValue entryId, string deliveryId)
    {
        try
        {
            return (int)await redis.GetDatabase().ScriptEvaluateAsync(TouchScript, [RedisKeys.PortReports, RedisKeys.Delivery(deliveryId)],
                [RedisKeys.PortReportersGroup, entryId, identity.Name, timeProvider.GetUtcNow().ToUnixTimeMilliseconds()]) switch
            {
                0 => SendOutcome.TakenOver,
                -1 => SendOutcome.Trimmed,
                _ => null,
            };
        }
        catch (Exception ex)
        {
            // Not fatal: at worst the report is taken over and shows twice in Port's run log.
            QueueFailed(ex);
            return null;
        }
    }

    private void QueueFailed(Exception exception)
    {
        if (!RedisFailures.IsOutOfMemory(exception))
        {
            Log.QueueError(logger, exception);
        }
        else if (_outOfMemoryLines.Take("redis_full") is var refused and > 0)
        {
            Log.QueueFull(logger, exception, refused);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventIds.ReportSent, LogLevel.Debug, "Reported delivery {DeliveryId} to Port run {RunId}")]
        public static partial void Sent(ILogger logger, string deliveryId, string runId);

        [LoggerMessage(EventIds.ReportCallFailed, LogLevel.Debug, "A call to Port's API for delivery {DeliveryId} failed")]
        public static partial void CallFailed(ILogger logger, Exception exception, string deliveryId);

        [LoggerMessage(EventIds.ReportFailed, LogLevel.Warning, "Could not report delivery {DeliveryId} to Port run {RunId}; given up after {Tries} tries")]
        public static partial void Failed(ILogger logger, string deliveryId, string runId, int tries);

        [LoggerMessage(EventIds.ReportMalformed, LogLevel.Warning, "Port report entry {EntryId} is damaged; dropped")]
        public static partial void Malformed(ILogger logger, string entryId);

        [LoggerMessage(EventIds.ReportQueueError, LogLevel.Warning, "Port report queue: Redis call failed; backing off")]
        public static partial void QueueError(ILogger logger, Exception exception);

        [LoggerMessage(EventIds.ReportQueueFull, LogLevel.Warning,
            "Port report queue: Redis is out of memory (maxmemory reached; noeviction refuses writes); backing off ({Count} calls refused since the last such line; at most one every 10 s)")]
        public static partial void QueueFull(ILogger logger, Exception exception, long count);

        [LoggerMessage(EventIds.ReportHandedBack, LogLevel.Information, "Report of delivery {DeliveryId} unsent at the stop; handed back to the stream")]
        public static partial void HandedBack(ILogger logger, string deliveryId);

        [LoggerMessage(EventIds.ReportTrimmed, LogLevel.Warning,
            "The report of delivery {DeliveryId} to Port run {RunId} was trimmed from the report stream while it waited (more reports waiting than it keeps); it is lost")]
        public static partial void TrimmedWhileWaiting(ILogger logger, string deliveryId, string runId);

        [LoggerMessage(EventIds.ReportsTrimmed, LogLevel.Warning,
            "{Count} reports were trimmed from the report stream before they were sent (waiting in a reporter, or left by a stopped one); they are lost")]
        public static partial void Trimmed(ILogger logger, int count);

        [LoggerMessage(EventIds.PortFailingForAll, LogLevel.Warning,
            "Port's API has failed every report tried since {Since:o} (Port down or rate-limiting the relay, its credentials lacking a permission, or runs it refuses one by one); reports wait without spending their attempts, up to {MaxAgeHours} h (Dispatcher:Retry:MaxAgeHours)")]
        public static partial void PortFailingForAll(ILogger logger, DateTimeOffset since, double maxAgeHours);

        [LoggerMessage(EventIds.PortApiPlainHttp, LogLevel.Warning,
            "Port:ApiBaseUrl is plain http to {Host}: the client secret and the tokens cross the network unencrypted; use https")]
        public static partial void PlainHttpApi(ILogger logger, string host);

        [LoggerMessage(EventIds.ReportReclaimTooShort, LogLevel.Warning,
            "Dispatcher:PortReportReclaimSeconds is {Seconds} s: a report still being retried can go {Minutes} min between touches, and would then be taken over and sent twice")]
        public static partial void ReclaimTooShort(ILogger logger, double seconds, double minutes);

        [LoggerMessage(EventIds.ReportAlreadyEnded, LogLevel.Information,
            "Port run {RunId} already has a final status; the report of delivery {DeliveryId} ({Status}) was not added (an earlier try of it may have been)")]
        public static partial void AlreadyEnded(ILogger logger, string deliveryId, string runId, string? status);

        [LoggerMessage(EventIds.ReportTakenOver, LogLevel.Information, "Report of delivery {DeliveryId} is no longer this reporter's: taken over by another during its wait (or trimmed away, then counted in event 2212); left to that one")]
        public static partial void TakenOver(ILogger logger, string deliveryId);
    }
}
