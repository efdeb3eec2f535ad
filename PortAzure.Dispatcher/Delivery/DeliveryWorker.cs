using System.Collections.Concurrent;
using System.Diagnostics;
using System.Threading.Channels;
using Microsoft.Extensions.Options;
using PortAzure.Diagnostics;
using PortAzure.Dispatcher.Diagnostics;
using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Dispatcher.Delivery;

/// <summary>
/// Feeds the delivery slots: due retries first, then entries reclaimed from stopped consumers, then new
/// stream entries. Woken by the Ingress's pub/sub message; polls slowly as a safety net.
/// </summary>
internal sealed partial class DeliveryWorker(
    IConnectionMultiplexer redis,
    DeliveryStore store,
    DeliveryProcessor processor,
    ConsumerIdentity identity,
    IOptionsMonitor<DispatcherOptions> options,
    TimeProvider timeProvider,
    ILogger<DeliveryWorker> logger) : BackgroundService
{
    private const int ReadBackPage = 100;
    private const string OutOfMemoryLine = "redis_full";

    private readonly Channel<bool> _wake = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });
    private readonly ConcurrentDictionary<Task, bool> _inFlight = new();
    // The stream entries being processed here, by id: neither a reclaim nor a read back of this consumer's pending list
    // starts one of them a second time.
    private readonly ConcurrentDictionary<string, bool> _inFlightEntries = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _abandon = new();
    private readonly LogThrottle _outOfMemoryLines = new(timeProvider, TimeSpan.FromSeconds(10));
    private RedisValue _claimCursor = "0-0";
    // Timestamps, not wall-clock times: a clock stepped back would hold off the reclaiming of crashed replicas' entries
    // (or cut the drain's grace short) by the size of the step.
    private long? _lastClaimAt;
    private long _stopSignalledAt;
    // A reclaim or a read failed: its reply may have been lost after Redis had made this consumer the owner of the entries,
    // which then waited ClaimMinIdle (30 s by default) to be reclaimed. The next round reads them back (as the first does
    // under a configured consumer name, which may have held entries before a restart).
    private bool _mayHoldUnread;
    // Where the next read back goes on after one that the free slots stopped. Begun from the start each time, it found the
    // same entries again (held by leases still running, each given up at once) and never reached those after them: a hot
    // loop until the leases ran out.
    private RedisValue _readBackAfter = "0-0";
    // The stream entries this consumer has taken over (reclaimed or read back). One whose crashed attempt's lease still runs
    // is given up ("leased by another", 2004) and reclaimed again every ClaimMinIdle until the lease ends: each time it read
    // as another stopped consumer (2104), two or three Warnings for one crash. Touched by the loop alone; cleared when
    // large, which costs at most one Warning more per entry.
    private readonly HashSet<string> _takenOver = new(StringComparer.Ordinal);
    private const int TakenOverRemembered = 10_000;
    // Entries whose processing failed here (a full Redis, 2113, or a defect, 2106): left pending with this consumer, they
    // come back to it in the next reclaim, and are not another consumer's crash (2104). Added by the slots, moved into
    // _takenOver by the loop.
    private readonly ConcurrentQueue<string> _failedHere = new();

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var opts = options.CurrentValue;
        using var slots = new SemaphoreSlim(opts.MaxConcurrency, opts.MaxConcurrency);
        if (opts.RequestTimeoutSeconds > opts.ShutdownGraceSeconds)
        {
            // Allowed (tests cut POSTs short on purpose), but in production a stop would cut a POST short that may have
            // reached Azure, and another replica would post it again: a second pipeline run.
            Log.TimeoutBeyondGrace(logger, opts.RequestTimeoutSeconds, opts.ShutdownGraceSeconds);
        }
        Log.Started(logger, identity.Name, opts.MaxConcurrency);
        var errorBackoff = new ErrorBackoff(timeProvider);
        _mayHoldUnread = opts.ConsumerName is not null;
        var groupReady = false;
        var subscribed = false;

        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                if (!groupReady)
                {
                    var db = redis.GetDatabase();
                    if (await ConsumerGroup.EnsureAsync(db, RedisKeys.Stream, RedisKeys.ConsumerGroup))
                    {
                        Log.GroupCreated(logger, RedisKeys.ConsumerGroup);
                    }
                    await ConsumerGroup.RemoveStaleConsumersAsync(db, RedisKeys.Stream, RedisKeys.ConsumerGroup, identity.Name, options.CurrentValue.ClaimMinIdle);
                    groupReady = true;
                }
                if (!subscribed)
                {
                    await redis.GetSubscriber().SubscribeAsync(RedisChannel.Literal(RedisKeys.WakeChannel), (_, _) => _wake.Writer.TryWrite(true));
                    subscribed = true;
                }

                // Wait for a free slot; the read below asks for no more entries than there are slots.
                await slots.WaitAsync(stoppingToken);
                slots.Release();

                // Emptied before the reads, not after them: a run queued while they ran then still wakes the wait below.
                while (_wake.Reader.TryRead(out _))
                {
                }
                var started = await FeedAsync(slots, stoppingToken);
                errorBackoff.Reset();
                if (started == 0)
                {
                    await WaitForWorkAsync(stoppingToken);
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
            catch (RedisServerException ex) when (ex.Message.StartsWith("NOGROUP", StringComparison.Ordinal))
            {
                // Redis lost the group (restart without persistence, or the stream was deleted): make it again.
                groupReady = false;
                Log.RedisError(logger, ex, "consumer group missing; re-creating it");
            }
            catch (Exception ex) when (RedisFailures.IsOutOfMemory(ex))
            {
                // A full Redis refuses the group's creation (when it is not there yet: one that is, is joined) and
                // the schedule's claims: the same cause as a refused begin, in the same line.
                if (_outOfMemoryLines.Take(OutOfMemoryLine) is var refused and > 0)
                {
                    Log.RedisFull(logger, ex, refused);
                }
                await errorBackoff.WaitAsync(stoppingToken);
            }
            catch (Exception ex)
            {
                // Whatever it is (Redis away, a damaged entry), the loop backs off and goes on:
                // a faulted BackgroundService would stop the whole Dispatcher.
                Log.RedisError(logger, ex, $"backing off {errorBackoff.Current.TotalMilliseconds} ms");
                await errorBackoff.WaitAsync(stoppingToken);
            }
        }

        await DrainAsync();
    }

    /// <remarks>
    /// Each read is skipped once the stop is signalled: what it read would start POSTs after SIGTERM, whose grace
    /// may then cut them short (abandoned mid-POST, a run is posted again by another replica).
    /// </remarks>
    private async Task<int> FeedAsync(SemaphoreSlim slots, CancellationToken stoppingToken)
    {
        var opts = options.CurrentValue;
        var started = 0;
        var now = timeProvider.GetUtcNow();
        if (stoppingToken.IsCancellationRequested)
        {
            return 0;
        }

        var due = await store.ClaimDueRetriesAsync(now, opts.LeaseDuration, slots.CurrentCount);
        if (stoppingToken.IsCancellationRequested && due.Count > 0)
        {
            // Stopped while claiming: the slots are due again at once for the other replicas.
            await store.ReleaseRetryClaimsAsync(due.Select(d => d.DeliveryId), timeProvider.GetUtcNow());
            return 0;
        }
        var handled = 0;
        try
        {
            // A damaged record makes FromFields return null (dropped below), never throw: a throw here would come back
            // at every pass once its claim is released, and keep this Dispatcher from reading new runs.
            foreach (var (deliveryId, reclaimed) in due)
            {
                var entry = await store.LoadEntryAsync(deliveryId);
                if (entry is null)
                {
                    Log.Malformed(logger, deliveryId);
                    await store.RemoveFromScheduleAsync(deliveryId);
                }
                else
                {
                    await StartAsync(slots, entry, null, claimed: reclaimed, stoppingToken);
                    started++;
                }
                handled++;
            }
        }
        catch
        {
            // A failure before these were started: their claims end here, so that the next claim of their slots is not
            // counted as a crashed attempt. Any failure, not only one known as Redis's: the client has failed calls with
            // exceptions nobody listed (a raw socket reset), and the slots then waited out the lease (82.5 s by default).
            await store.ReleaseRetryClaimsAsync(due.Skip(handled).Select(d => d.DeliveryId), timeProvider.GetUtcNow());
            throw;
        }

        // Set before the read of new entries: what a failure from there on drops lies after everything this consumer holds,
        // so a read back under way may keep its cursor.
        var onlyNewDropped = false;
        try
        {
            if (_mayHoldUnread && slots.CurrentCount > 0 && !stoppingToken.IsCancellationRequested)
            {
                var (own, complete) = await ReadOwnUnstartedAsync(slots.CurrentCount);
                _mayHoldUnread = !complete;
                if (own.Count > 0)
                {
                    Log.ReadBack(logger, own.Count);
                }
                // Counted as claimed, as the reclaim that would otherwise have taken them: an entry whose processing
                // failed here is among them, and must still end up as poison if it keeps failing.
                started += (await StartEntriesAsync(slots, own, claimed: true, stoppingToken)).Started;
            }

            if ((_lastClaimAt is not { } last || timeProvider.GetElapsedTime(last) >= TimeSpan.FromSeconds(opts.ClaimIntervalSeconds))
                && slots.CurrentCount > 0 && !stoppingToken.IsCancellationRequested)
            {
                _lastClaimAt = timeProvider.GetTimestamp();
                // Taken before the reclaim, as the read back's: it returns this consumer's own entries too, and one whose
                // attempt ended after Redis ran it (acknowledged, a retry scheduled) would otherwise be started again.
                var processing = _inFlightEntries.Keys.ToHashSet(StringComparer.Ordinal);
                while (_failedHere.TryDequeue(out var failedHere))
                {
                    RememberTakenOver(failedHere);
                }
                var claim = await redis.GetDatabase().StreamAutoClaimAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, identity.Name,
                    (long)opts.ClaimMinIdle.TotalMilliseconds, _claimCursor, slots.CurrentCount);
                _claimCursor = claim.NextStartId;
                var (reclaimed, takenOverBefore) = await StartEntriesAsync(slots, [.. claim.ClaimedEntries.Where(e => !processing.Contains(e.Id.ToString()))],
                    claimed: true, stoppingToken);
                if (reclaimed > takenOverBefore)
                {
                    // On a full Redis every begin is refused, and a live Dispatcher's entries are left pending as a crashed
                    // one's are: reclaimed by another replica, they are no crash to warn of. Asked only when there is a line
                    // to write (the reclaim itself cannot tell whose entries it took). Not cancelled by a stop: the entries are
                    // started, and their line is still owed (the client's own timeout bounds the wait).
                    if (await RedisMemory.IsFullAsync(redis, CancellationToken.None) is true)
                    {
                        Log.ClaimedWhileFull(logger, reclaimed - takenOverBefore);
                    }
                    else
                    {
                        Log.Claimed(logger, reclaimed - takenOverBefore);
                    }
                }
                if (takenOverBefore > 0)
                {
                    Log.ClaimedAgain(logger, takenOverBefore);
                }
                started += reclaimed;
            }

            if (slots.CurrentCount > 0 && !stoppingToken.IsCancellationRequested)
            {
                onlyNewDropped = true;
                var entries = await redis.GetDatabase().StreamReadGroupAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup, identity.Name, ">", slots.CurrentCount);
                started += (await StartEntriesAsync(slots, entries, claimed: false, stoppingToken)).Started;
            }
        }
        catch
        {
            // The call that failed may have given this consumer entries it never saw (a reply lost), and the entries after
            // a failed one in what was read are dropped here: all of them are pending for this consumer. Those of a reclaim or
            // a read back may lie anywhere in its list; a new read's lie after all the others, so a read back under way goes
            // on (begun again, each backoff round of a lasting failure would restart the same leased entries).
            _mayHoldUnread = true;
            if (!onlyNewDropped)
            {
                _readBackAfter = "0-0";
            }
            throw;
        }
        return started;
    }

    /// <summary>
    /// Up to <paramref name="max"/> entries pending for this consumer that it is not processing, from where the last read
    /// back stopped (<see cref="ConsumerGroup.ReadOwnPendingAsync"/>). One held by a lease that is still running (a finish
    /// that gave up, a crash before a restart under the same name) is started, given up at once ("leased by another",
    /// 2004), and reclaimed up to a ClaimMinIdle later than it would have been: the read resets its idle time.
    /// </summary>
    /// <returns>The entries, and whether there were no more.</returns>
    private async Task<(List<StreamEntry> Entries, bool Complete)> ReadOwnUnstartedAsync(int max)
    {
        // Taken before the read: an attempt that ends (and acknowledges its entry) while the read is under way is still
        // known, where a look after the read would start the entry again (a second, early POST of a run that got a 503).
        var processing = _inFlightEntries.Keys.ToHashSet(StringComparer.Ordinal);
        var (found, stoppedAt) = await ConsumerGroup.ReadOwnPendingAsync(redis.GetDatabase(), RedisKeys.Stream, RedisKeys.ConsumerGroup, identity.Name,
            _readBackAfter, processing, max, ReadBackPage);
        _readBackAfter = stoppedAt ?? "0-0";
        return (found, stoppedAt is null);
    }

    /// <returns>The entries started, and how many of them this consumer had taken over before (claimed only).</returns>
    private async Task<(int Started, int TakenOverBefore)> StartEntriesAsync(SemaphoreSlim slots, IReadOnlyList<StreamEntry> entries, bool claimed,
        CancellationToken stoppingToken)
    {
        var started = 0;
        var takenOverBefore = 0;
        foreach (var streamEntry in entries)
        {
            if (DeliveryEntry.FromStreamEntry(streamEntry) is not { } entry)
            {
                // Not written by the Ingress: nothing here can be delivered. Acknowledged and deleted so it
                // stops coming back (and stops counting as the oldest queued run). The delivery it names, if any (a replay
                // of a damaged record), is what an operator looks up.
                var named = (string?)streamEntry[DeliveryEntry.Fields.DeliveryId];
                Log.Malformed(logger, string.IsNullOrEmpty(named) ? streamEntry.Id.ToString()
                    : $"{streamEntry.Id} (delivery {(named.Length > 100 ? named[..100] : named)})");
                await store.RemoveMalformedEntryAsync(streamEntry.Id);
                continue;
            }
            // Being processed here already: the reclaim takes this consumer's own entries too (an attempt whose finish is
            // still retrying outlasts ClaimMinIdle), and a second attempt would only find the first one's lease.
            var streamId = streamEntry.Id.ToString();
            if (!_inFlightEntries.TryAdd(streamId, true))
            {
                continue;
            }
            if (claimed && !RememberTakenOver(streamId))
            {
                takenOverBefore++;
            }
            await StartAsync(slots, entry, streamId, claimed, stoppingToken);
            started++;
        }
        return (started, takenOverBefore);
    }

    /// <returns>False if this consumer had taken the entry over before.</returns>
    private bool RememberTakenOver(string streamId)
    {
        if (_takenOver.Count >= TakenOverRemembered)
        {
            _takenOver.Clear();
        }
        return _takenOver.Add(streamId);
    }

    /// <param name="stoppingToken">The stop signal: an attempt that has not posted by then gives its delivery back.</param>
    private async Task StartAsync(SemaphoreSlim slots, DeliveryEntry entry, string? streamId, bool claimed, CancellationToken stoppingToken)
    {
        // The slot is taken even during shutdown: the entry is already ours and must be handled or left pending.
        await slots.WaitAsync(CancellationToken.None);
        var task = Task.Run(async () =>
        {
            // Ended after the lines below, which then carry the run's trace id. Started inside the try: whatever a listener
            // throws there must not skip the finally (the slot would never be released, the entry never started again here).
            Activity? activity = null;
            try
            {
                activity = DeliveryProcessor.StartSpan(entry, claimed);
                await processor.ProcessAsync(entry, streamId, claimed, activity, stoppingToken, _abandon.Token);
            }
            catch (OperationCanceledException ex) when (_abandon.IsCancellationRequested)
            {
                // Shutdown's grace period ran out mid-POST: left pending for another Dispatcher.
                DeliveryProcessor.SpanFailed(activity, ex);
                Log.Abandoned(logger, entry.DeliveryId);
            }
            catch (Exception ex) when (RedisFailures.IsOutOfMemory(ex))
            {
                DeliveryProcessor.SpanFailed(activity, ex);
                // Redis is full: its refusal of the begin's lease (the finishes' first writes need no memory, so they go
                // through) is no defect of the relay, and every attempt meets it until memory is freed. Throttled: the
                // slots go on through the backlog, one refused begin after another.
                if (_outOfMemoryLines.Take(OutOfMemoryLine) is var failed and > 0)
                {
                    Log.RedisFull(logger, ex, failed);
                }
                FailedHere(streamId);
            }
            catch (Exception ex)
            {
                // Left as it is: a stream entry stays pending and is reclaimed; a retry's lease runs out.
                DeliveryProcessor.SpanFailed(activity, ex);
                Log.ProcessingFailed(logger, ex, entry.DeliveryId);
                FailedHere(streamId);
            }
            finally
            {
                if (streamId is not null)
                {
                    _inFlightEntries.TryRemove(streamId, out _);
                }
                slots.Release();
                activity?.Dispose();
            }
        }, CancellationToken.None);
        _inFlight.TryAdd(task, true);
        _ = task.ContinueWith(t => _inFlight.TryRemove(t, out _), TaskScheduler.Default);
    }

    private void FailedHere(string? streamId)
    {
        if (streamId is not null)
        {
            _failedHere.Enqueue(streamId);
        }
    }

    private async Task WaitForWorkAsync(CancellationToken stoppingToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(options.CurrentValue.PollIntervalSeconds));
        try
        {
            await _wake.Reader.WaitToReadAsync(timeout.Token);
        }
        catch (OperationCanceledException) when (!stoppingToken.IsCancellationRequested)
        {
        }
    }

    /// <summary>Lets in-flight POSTs finish within the grace period; what is left stays pending for others.</summary>
    private async Task DrainAsync()
    {
        var grace = TimeSpan.FromSeconds(options.CurrentValue.ShutdownGraceSeconds);
        if (Interlocked.Read(ref _stopSignalledAt) is var signalledAt and > 0)
        {
            var spent = timeProvider.GetElapsedTime(signalledAt);
            grace = spent >= grace ? TimeSpan.Zero : grace - spent;
        }
        Log.ShuttingDown(logger, _inFlight.Count, Math.Round(grace.TotalSeconds, 1));
        try
        {
            await Task.WhenAll(_inFlight.Keys).WaitAsync(grace, timeProvider);
        }
        catch (TimeoutException)
        {
            Log.ShutdownAbandoned(logger, _inFlight.Count);
            await _abandon.CancelAsync();
            // Let the cancelled attempts unwind (and any that just got an answer record it) before
            // the host disposes the Redis connection.
            try
            {
                await Task.WhenAll(_inFlight.Keys).WaitAsync(TimeSpan.FromSeconds(3), timeProvider);
            }
            catch (TimeoutException)
            {
            }
        }
    }

    /// <summary>
    /// Noted before the loop is told to stop: the drain's grace counts from the signal, as the host's shutdown timeout
    /// does, not from when a round of reads under way at the signal ends.
    /// </summary>
    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        Interlocked.CompareExchange(ref _stopSignalledAt, Math.Max(1, timeProvider.GetTimestamp()), 0);
        await base.StopAsync(cancellationToken);
    }

    public override void Dispose()
    {
        _abandon.Dispose();
        base.Dispose();
    }

    private static partial class Log
    {
        [LoggerMessage(EventIds.WorkerStarted, LogLevel.Information, "Dispatcher consumer {Consumer} started with {MaxConcurrency} delivery slots")]
        public static partial void Started(ILogger logger, string consumer, int maxConcurrency);

        [LoggerMessage(EventIds.TimeoutBeyondGrace, LogLevel.Warning,
            "Dispatcher:RequestTimeoutSeconds ({Timeout} s) exceeds Dispatcher:ShutdownGraceSeconds ({Grace} s): a stop can cut a POST short that may have reached Azure, and it would be posted again")]
        public static partial void TimeoutBeyondGrace(ILogger logger, double timeout, double grace);

        [LoggerMessage(EventIds.GroupCreated, LogLevel.Information, "Consumer group {Group} created")]
        public static partial void GroupCreated(ILogger logger, string group);

        [LoggerMessage(EventIds.RedisError, LogLevel.Warning, "Error in the delivery loop: {Action}")]
        public static partial void RedisError(ILogger logger, Exception exception, string action);

        [LoggerMessage(EventIds.Claimed, LogLevel.Warning, "Reclaimed {Count} entries from stopped consumers")]
        public static partial void Claimed(ILogger logger, int count);

        [LoggerMessage(EventIds.ClaimedAgain, LogLevel.Debug,
            "Reclaimed {Count} entries this consumer had taken over before (a stopped attempt's lease still running, or failing here)")]
        public static partial void ClaimedAgain(ILogger logger, int count);

        [LoggerMessage(EventIds.ClaimedWhileFull, LogLevel.Information,
            "Reclaimed {Count} entries while Redis is full: their consumers may have stopped, or be live and refused their begin for memory (2113)")]
        public static partial void ClaimedWhileFull(ILogger logger, int count);

        [LoggerMessage(EventIds.ReadBack, LogLevel.Warning,
            "Read back {Count} entries pending for this consumer that it was not processing (a read's reply lost, or held before a restart)")]
        public static partial void ReadBack(ILogger logger, int count);

        [LoggerMessage(EventIds.MalformedEntry, LogLevel.Error, "Entry {Id} cannot be delivered: its fields or record are missing or damaged")]
        public static partial void Malformed(ILogger logger, string id);

        [LoggerMessage(EventIds.ProcessingFailed, LogLevel.Error, "Delivery {DeliveryId} failed unexpectedly; it stays pending and will be picked up again")]
        public static partial void ProcessingFailed(ILogger logger, Exception exception, string deliveryId);

        [LoggerMessage(EventIds.RedisFull, LogLevel.Error,
            "Redis is out of memory (maxmemory reached; noeviction refuses writes): no delivery can start until memory is freed or added; the runs stay queued ({Count} writes refused since the last such line; at most one every 10 s)")]
        public static partial void RedisFull(ILogger logger, Exception exception, long count);

        [LoggerMessage(EventIds.ShuttingDown, LogLevel.Information, "Stopping: waiting for {InFlight} in-flight deliveries up to {GraceSeconds} s")]
        public static partial void ShuttingDown(ILogger logger, int inFlight, double graceSeconds);

        [LoggerMessage(EventIds.Abandoned, LogLevel.Information, "Delivery {DeliveryId} was abandoned at shutdown; it stays pending for another Dispatcher")]
        public static partial void Abandoned(ILogger logger, string deliveryId);

        [LoggerMessage(EventIds.ShutdownAbandoned, LogLevel.Warning, "Grace period over: {InFlight} deliveries abandoned; they stay pending for other Dispatchers")]
        public static partial void ShutdownAbandoned(ILogger logger, int inFlight);
    }
}
