using System.Diagnostics;
using System.Text.Json;
using Microsoft.Extensions.Options;
using OpenTelemetry.Context.Propagation;
using PortAzure.Diagnostics;
using PortAzure.Dispatcher.Diagnostics;
using PortAzure.Dispatcher.PortReporting;
using PortAzure.Dispatcher.Retry;
using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Dispatcher.Delivery;

/// <summary>
/// One delivery attempt from start to recorded end: lease, state check, POST, classification, and the
/// one atomic step that records the result and moves the delivery where it belongs next.
/// </summary>
internal sealed partial class DeliveryProcessor(
    DeliveryStore store,
    AzureWebhookClient client,
    IOptionsMonitor<DispatcherOptions> options,
    TimeProvider timeProvider,
    DispatcherMetrics metrics,
    PortReporter reporter,
    ConsumerIdentity identity,
    ILogger<DeliveryProcessor> logger)
{
    // Once Azure has answered, the result is worth waiting for, for Dispatcher:FinishRetrySeconds (inside the
    // attempt's lease, so no other replica posts the run meanwhile). Never more than 2 s apart: when Redis is
    // back, the result should be recorded at once.
    private static readonly TimeSpan[] FinishBackoff =
        [TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2)];

    private static readonly TimeSpan[] BeginBackoff =
        [TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(4), TimeSpan.FromSeconds(8)];

    /// <param name="streamId">The stream entry's id, or null when the delivery came from the retry schedule.</param>
    /// <param name="claimed">
    /// True when the entry (or the retry-schedule slot) was reclaimed from another, stopped or crashed,
    /// consumer: counted towards <see cref="DispatcherOptions.MaxClaims"/>.
    /// </param>
    /// <param name="activity">This processing's span (<see cref="StartSpan"/>), which its outcome is told to.</param>
    /// <param name="stopping">Signalled at the stop: an attempt that has not posted yet gives its lease back instead.</param>
    /// <param name="cancellationToken">Cancels the POST itself: the stop's grace period has run out.</param>
    public async Task ProcessAsync(DeliveryEntry entry, string? streamId, bool claimed, Activity? activity, CancellationToken stopping,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var opts = options.CurrentValue;
        var now = timeProvider.GetUtcNow();
        // One token per attempt: a late finish of this attempt can tell that its lease was taken over.
        var token = $"{identity.Name}/{Guid.NewGuid():N}";
        // Nothing has been posted yet: riding out a short Redis outage here is safe, and quicker than
        // leaving the entry to be reclaimed after the lease. Every try is passed the same `now` (a retry of a
        // try whose reply was lost must find its own probe), but each one sets the lease anew.
        var triedAt = timeProvider.GetTimestamp();
        BeginResult begin;
        try
        {
            begin = await WithRedisRetriesAsync(() =>
            {
                triedAt = timeProvider.GetTimestamp();
                return store.BeginAsync(entry, token, opts.LeaseDuration, claimed, now, TimeSpan.FromSeconds(opts.TargetHealth.ProbeIntervalSeconds),
                    TimeSpan.FromHours(opts.DeliveredRetentionHours));
            }, i => i < BeginBackoff.Length ? BeginBackoff[i] : null, entry.DeliveryId, "begin", cancellationToken: stopping);
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            // Stopped between two tries: the remaining backoff (up to 15.6 s in all) would outlast the grace. A try
            // whose reply was lost may have set the lease; it is given back if Redis lets it, and a retry's claim of its
            // schedule slot is undone either way.
            await store.ReleaseUnfinishedBeginAsync(entry.DeliveryId, token, fromSchedule: streamId is null, timeProvider.GetUtcNow());
            Log.NotPostedAtStop(logger, entry.DeliveryId);
            activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, NotPosted.Stopped);
            return;
        }
        // The lease was set after the last try started, so it lasts at least until the time kept here: the finish's
        // window counts from there, not from before a Begin that retried through a Redis outage.
        var lease = new AttemptLease(token, triedAt, opts.LeaseDuration);
        if (begin.AlreadyFinished)
        {
            Log.AlreadyFinished(logger, entry.DeliveryId, begin.State);
            activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, NotPosted.AlreadyFinished);
            await FinishAsync(FinishMode.Skip, entry, streamId, lease, now, null, null, []);
            return;
        }
        if (!begin.Leased)
        {
            // Another attempt is posting it right now; it acknowledges the stream entry when done.
            Log.LeaseHeld(logger, entry.DeliveryId);
            activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, NotPosted.LeaseHeld);
            return;
        }

        using var scope = logger.BeginScope(new Dictionary<string, object?>
        {
            ["DeliveryId"] = entry.DeliveryId,
            ["RunId"] = entry.RunId,
        });

        if (begin.DamagedRecord is { } found)
        {
            var hint = $"The delivery's record in Redis was a {found}, not a hash (damaged, or overwritten by something else), so whether "
                + $"this run was posted before is unknown; it was not posted again. The value is kept under {RedisKeys.DamagedDelivery(entry.DeliveryId)} "
                + $"for {opts.DeliveredRetentionHours} h. Check the pipeline's runs, then replay or discard.";
            await DeadLetterAsync(entry, streamId, lease, now, begin.Attempts, "record_damaged", hint, null, null, activity, lastStatus: begin.LastStatus);
            return;
        }
        if (claimed && begin.Claims > opts.MaxClaims)
        {
            // Each claim stands for a Dispatcher that died with the run: perhaps mid-POST.
            var hint = $"The entry was reclaimed from stopped Dispatchers {begin.Claims} times; it is treated as poison. A Dispatcher may have died after "
                + $"posting it: {OutcomeClassifier.CheckRuns} once the cause is found.";
            await DeadLetterAsync(entry, streamId, lease, now, begin.Attempts, "poison", hint, null, null, activity, lastStatus: begin.LastStatus);
            return;
        }
        var since = begin.Since ?? entry.ReceivedAt;
        if (begin.PausedUntil is { } pausedUntil)
        {
            await HoldForPausedTargetAsync(entry, streamId, lease, now, since, pausedUntil, begin, activity);
            return;
        }

        if (stopping.IsCancellationRequested)
        {
            // Begun before the stop (a Begin retrying through a Redis blip can outlast the signal): a POST started now
            // could be cut short by the grace period after Azure got it. Left to the other replicas: a retry is due
            // again at once, a stream entry at their next reclaim.
            await store.ReleaseLeaseAsync(entry.DeliveryId, lease.Token, fromSchedule: streamId is null, timeProvider.GetUtcNow());
            Log.NotPostedAtStop(logger, entry.DeliveryId);
            activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, NotPosted.Stopped);
            return;
        }
        var attempt = begin.Attempts + 1;
        activity?.SetTag(PortAzureDiagnostics.Tags.Attempt, attempt);
        AttemptResult result;
        try
        {
            result = await client.PostAsync(entry, cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Shutdown gave up on this POST. Nobody will record its result, so the lease would only hold the run back
            // from the other replicas (for the whole finish window); whether Azure got it stays unknown either way.
            await store.ReleaseLeaseAsync(entry.DeliveryId, lease.Token, fromSchedule: streamId is null, timeProvider.GetUtcNow());
            throw;
        }
        now = timeProvider.GetUtcNow();
        metrics.Attempt(result);
        activity?.SetTag("http.response.status_code", result.StatusCode);
        activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, result.Outcome.ToString().ToLowerInvariant());
        var attemptJson = AttemptJson(attempt, now, result);

        switch (result.Outcome)
        {
            case AttemptOutcome.Delivered:
                await FinishAsync(FinishMode.Delivered, entry, streamId, lease, now, null, attemptJson,
                [
                    .. IdentityFields(entry),
                    new(DeliveryRecord.State, DeliveryStates.Delivered),
                    new(DeliveryRecord.Attempts, attempt),
                    new(DeliveryRecord.LastStatus, result.StatusCode ?? 0),
                    new(DeliveryRecord.DeliveredAt, now.ToUnixTimeMilliseconds()),
                    new(DeliveryRecord.UpdatedAt, now.ToUnixTimeMilliseconds()),
                ], reporter.Delivered(entry, result.StatusCode ?? 0));
                metrics.Delivered(now - entry.ReceivedAt);
                Log.Delivered(logger, entry.DeliveryId, entry.Org, entry.Webhook, result.StatusCode ?? 0, attempt);
                break;

            case AttemptOutcome.Transient:
                var policy = new RetryPolicy(opts.Retry);
                // Two refusals that say nothing against this run spend none of its attempts; it waits up to the retry age:
                // - a paused target's probe that Azure answered (or that made no connection): the target still fails, as for the
                //   deliveries held behind the pause. Counted, a target with few runs queued had each of them dead-lettered after
                //   MaxAttempts probes, minutes into an outage. A probe whose answer may be lost counts: it may have started the
                //   pipeline. It comes back with the pause's next probe, spread as the held deliveries are.
                // - a 429: Azure throttles and started nothing (as Port's 429s spend no attempt of a report). Counted, a throttled
                //   webhook dead-lettered its runs after ten of them.
                // Such a try is still numbered (the history, the backoff) but counted apart: MaxAttempts holds the tries that spent.
                var throttled = result.StatusCode == StatusCodes.Status429TooManyRequests;
                var spendsNoAttempt = throttled || (begin.Probe && !OutcomeClassifier.AnswerMayBeLost(result));
                // (Never more than the tries: a damaged attempts field reads 0, and MaxAttempts must still hold.)
                var freeAttempts = Math.Min(begin.FreeAttempts, begin.Attempts) + (spendsNoAttempt ? 1 : 0);
                var next = !spendsNoAttempt ? policy.NextAttemptAt(attempt - freeAttempts, attempt, now, since, result.RetryAfter)
                    : throttled ? policy.WithinAge(now + policy.Delay(attempt, result.RetryAfter), since)
                    : policy.WithinAge(now + ProbeAgainIn(opts, result.RetryAfter), since);
                if (next is { } dueAt)
                {
                    activity?.SetStatus(ActivityStatusCode.Error, result.StatusClass);
                    var failures = await FinishAsync(FinishMode.Retry, entry, streamId, lease, now, dueAt, attemptJson,
                    [
                        .. EntryFields(entry, DeliveryStates.Retrying, now),
                        new(DeliveryRecord.Attempts, attempt),
                        new(DeliveryRecord.FreeAttempts, freeAttempts),
                        .. FailedTryFields(result),
                        new(DeliveryRecord.NextAttemptAt, dueAt.ToUnixTimeMilliseconds()),
                    ]);
                    Log.RetryScheduled(logger, entry.DeliveryId, result.StatusClass, attempt, dueAt);
                    if (failures == opts.TargetHealth.FailureThreshold)
                    {
                        Log.TargetPaused(logger, entry.Org, entry.Webhook, failures);
                    }
                }
                else
                {
                    await DeadLetterAsync(entry, streamId, lease, now, attempt, "retries_exhausted",
                        WithLostAnswer(OutcomeClassifier.Hint(result.StatusCode, result.Error), begin.AnswerLost || OutcomeClassifier.AnswerMayBeLost(result)),
                        result, attemptJson, activity);
                }
                break;

            default:
                await DeadLetterAsync(entry, streamId, lease, now, attempt, "permanent_failure",
                    WithLostAnswer(OutcomeClassifier.Hint(result.StatusCode, result.Error), begin.AnswerLost), result, attemptJson, activity);
                break;
        }
        if (result.Outcome != AttemptOutcome.Delivered)
        {
            activity?.SetStatus(ActivityStatusCode.Error, result.StatusClass);
        }
    }

    /// <summary>
    /// When a refused probe is tried again: with the pause's next probe, spread over one more interval as the held deliveries
    /// are, or after Azure's Retry-After if that is later (up to Retry:MaxDelaySeconds).
    /// </summary>
    private static TimeSpan ProbeAgainIn(DispatcherOptions opts, TimeSpan? retryAfter)
    {
        var interval = TimeSpan.FromSeconds(opts.TargetHealth.ProbeIntervalSeconds);
        var spread = interval + (interval * Random.Shared.NextDouble());
        var asked = retryAfter is { } after ? TimeSpan.FromSeconds(Math.Min(after.TotalSeconds, opts.Retry.MaxDelaySeconds)) : TimeSpan.Zero;
        return asked > spread ? asked : spread;
    }

    /// <summary>
    /// The target is paused: wait for its probe without spending an attempt, but not past the retry age.
    /// Held deliveries are spread over the probe interval so that they do not all fall due at once.
    /// </summary>
    private async Task HoldForPausedTargetAsync(DeliveryEntry entry, string? streamId, AttemptLease lease, DateTimeOffset now, DateTimeOffset since, DateTimeOffset pausedUntil,
        BeginResult begin, Activity? activity)
    {
        var opts = options.CurrentValue;
        if (now - since > TimeSpan.FromHours(opts.Retry.MaxAgeHours))
        {
            var hint = $"The target {entry.Target} stayed paused (repeated transient failures) past Dispatcher:Retry:MaxAgeHours; replay once it answers again.";
            if (begin.LastStatus > 0 || begin.LastError.Length > 0)
            {
                // Its own last answer says more than the pause: a 500 is an inactive webhook, which never answers again by itself.
                hint += " This run's last try: " + OutcomeClassifier.Hint(begin.LastStatus > 0 ? begin.LastStatus : null, begin.LastError);
            }
            await DeadLetterAsync(entry, streamId, lease, now, begin.Attempts, "retries_exhausted", WithLostAnswer(hint, begin.AnswerLost), null, null, activity,
                lastStatus: begin.LastStatus);
            return;
        }
        var due = pausedUntil + (TimeSpan.FromSeconds(opts.TargetHealth.ProbeIntervalSeconds) * Random.Shared.NextDouble());
        // Held until after its retry age, a run was posted as the target's probe (or once the pause ended) later than any
        // retry is ever scheduled. It is looked at again just past its age instead: dead-lettered above if still paused.
        var pastAge = since + TimeSpan.FromHours(opts.Retry.MaxAgeHours) + TimeSpan.FromMilliseconds(1);
        if (due > pastAge)
        {
            due = pastAge;
        }
        KeyValuePair<string, RedisValue>[] fields = streamId is null
            // From the schedule: the record already holds the body; do not write it again.
            ? [new(DeliveryRecord.State, DeliveryStates.Retrying), new(DeliveryRecord.UpdatedAt, now.ToUnixTimeMilliseconds())]
            : EntryFields(entry, DeliveryStates.Retrying, now);
        await FinishAsync(FinishMode.Reschedule, entry, streamId, lease, now, due, null,
            [.. fields, new(DeliveryRecord.NextAttemptAt, due.ToUnixTimeMilliseconds())]);
        activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, NotPosted.TargetPaused);
        if (streamId is null && activity is not null)
        {
            // Looked at again from the schedule: a run is held anew every probe interval for as long as the pause lasts (up to
            // its retry age: thousands of spans in its trace). The run's trace keeps the hold of a run that arrived while the
            // target was paused, and the attempts; these repeats are not exported, nor are the Redis command spans under them
            // (made into spans after the span ends). Cleared once the hold is recorded: a failure to record it stays exported.
            activity.ActivityTraceFlags &= ~ActivityTraceFlags.Recorded;
        }
        metrics.Paused();
    }

    /// <summary>
    /// A dead letter's hint speaks of the last try's answer; a try whose answer was lost (this one or an earlier one) may have
    /// started the pipeline, and a replay would start another.
    /// </summary>
    private static string WithLostAnswer(string hint, bool answerLost) =>
        answerLost && !hint.Contains(OutcomeClassifier.CheckRuns, StringComparison.Ordinal)
            ? hint + " A try's answer was lost (no answer in time, a dropped connection or a gateway's 502/504): it may have started the pipeline; " + OutcomeClassifier.CheckRuns + "."
            : hint;

    /// <summary>
    /// What a failed try leaves on the record: its status and error, and, when its answer may have been lost, the mark that
    /// every later dead letter reads (never removed, a replay included: a run it started is still there).
    /// </summary>
    private static KeyValuePair<string, RedisValue>[] FailedTryFields(AttemptResult result)
    {
        KeyValuePair<string, RedisValue>[] fields = [new(DeliveryRecord.LastStatus, result.StatusCode ?? 0), new(DeliveryRecord.LastError, result.Error ?? "")];
        return OutcomeClassifier.AnswerMayBeLost(result) ? [.. fields, new(DeliveryRecord.AnswerLost, 1)] : fields;
    }

    /// <param name="result">This attempt's answer, or null when the dead letter comes without a try.</param>
    /// <param name="activity">The span of this processing of the run.</param>
    /// <param name="lastStatus">Without a try: the status of the record's last one, for the log line.</param>
    private async Task DeadLetterAsync(DeliveryEntry entry, string? streamId, AttemptLease lease, DateTimeOffset now, int attempts, string reason, string hint,
        AttemptResult? result, string? attemptJson, Activity? activity, int lastStatus = 0)
    {
        // The run's trace says where it ended: the span carries the reason (an attempt's outcome alone, "transient", read like
        // one more retry). (A try's own status, an error, is set when its result is known.)
        activity?.SetTag(PortAzureDiagnostics.Tags.Reason, reason);
        if (result is null)
        {
            activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, NotPosted.DeadLettered);
            activity?.SetStatus(ActivityStatusCode.Error, reason);
        }
        KeyValuePair<string, RedisValue>[] fields =
        [
            .. EntryFields(entry, DeliveryStates.DeadLettered, now),
            new(DeliveryRecord.Attempts, attempts),
            new(DeliveryRecord.Reason, reason),
            new(DeliveryRecord.Hint, hint),
            new(DeliveryRecord.DeadLetteredAt, now.ToUnixTimeMilliseconds()),
        ];
        if (result is not null)
        {
            // Without a try (held past the retry age, poison, a damaged record) the record keeps what its last try got.
            fields = [.. fields, .. FailedTryFields(result)];
        }
        await FinishAsync(FinishMode.DeadLetter, entry, streamId, lease, now, null, attemptJson, fields, reporter.DeadLettered(entry, reason, hint));
        metrics.DeadLettered(reason);
        Log.DeadLettered(logger, entry.DeliveryId, entry.Org, entry.Webhook, reason, result?.StatusCode ?? lastStatus);
    }

    /// <summary>
    /// Records the end of an attempt. Retried while Redis is briefly away: once Azure has answered, giving
    /// up here would let the entry be posted again after it is reclaimed.
    /// </summary>
    private async Task<long> FinishAsync(FinishMode mode, DeliveryEntry entry, string? streamId, AttemptLease lease, DateTimeOffset now, DateTimeOffset? dueAt, string? attemptJson,
        IReadOnlyList<KeyValuePair<string, RedisValue>> fields, PortReport? report = null)
    {
        var opts = options.CurrentValue;
        var request = new DeliveryStore.FinishRequest(mode, entry, streamId, lease.Token, now, dueAt,
            TimeSpan.FromHours(opts.DeliveredRetentionHours), attemptJson, opts.TargetHealth.FailureThreshold,
            now + TimeSpan.FromSeconds(opts.TargetHealth.ProbeIntervalSeconds), fields, report);
        // The last try must also end inside the lease (once it has run out, another replica may post the run
        // again), and a try can take a whole Redis timeout while Redis is away.
        // Elapsed time, not the wall clock: a clock stepped back would stretch the window past the lease.
        var started = timeProvider.GetTimestamp();
        var window = Min(opts.FinishRetryWindow, lease.Duration - timeProvider.GetElapsedTime(lease.TakenAt) - store.OperationTimeout);
        // Any failure is tried again here, not only those known as Redis's: giving up posts the run a second time once
        // the lease runs out, and the client has failed calls with exceptions nobody listed (a raw socket reset).
        var finished = await WithRedisRetriesAsync(() => store.FinishAsync(request),
            i => FinishBackoff[Math.Min(i, FinishBackoff.Length - 1)] is var delay && timeProvider.GetElapsedTime(started) + delay <= window ? delay : null,
            entry.DeliveryId, mode.ToString(), retryAny: true);
        if (finished.ReportError is { } error)
        {
            metrics.PortReport("not_queued");
            Log.ReportNotQueued(logger, entry.DeliveryId, error);
        }
        return finished.Failures;
    }

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    /// <summary>An attempt's lease: its token, and when (a timestamp) it was taken for how long, at the latest.</summary>
    private readonly record struct AttemptLease(string Token, long TakenAt, TimeSpan Duration);

    /// <param name="nextDelay">The wait before retry <c>i</c> (0-based), or null to give up and throw.</param>
    /// <param name="retryAny">Every exception is tried again, not only a Redis failure.</param>
    /// <param name="cancellationToken">Cancels a wait between two tries (never a try under way).</param>
    private async Task<T> WithRedisRetriesAsync<T>(Func<Task<T>> operation, Func<int, TimeSpan?> nextDelay, string deliveryId, string step,
        bool retryAny = false, CancellationToken cancellationToken = default)
    {
        for (var i = 0; ; i++)
        {
            try
            {
                return await operation();
            }
            catch (Exception ex) when (RedisFailures.IsFailure(ex) is var redisFailure && (retryAny || redisFailure) && nextDelay(i) is { } delay)
            {
                if (step == "begin" && RedisFailures.IsOutOfMemory(ex))
                {
                    // A full Redis is not away, and every slot meets it: its line is the worker's throttled 2113 once the
                    // begin gives up, not a warning per try per delivery. (A finish refused for memory, which its first
                    // write should prevent, stays a Warning: giving it up can post the run again.)
                    Log.RedisFullRetry(logger, step, deliveryId);
                }
                else if (redisFailure)
                {
                    Log.RedisRetry(logger, ex, step, deliveryId);
                }
                else
                {
                    Log.FinishFailedUnexpectedly(logger, ex, step, deliveryId);
                }
                await Task.Delay(delay, timeProvider, cancellationToken);
            }
        }
    }

    /// <summary>
    /// The consumer span of one processing of <paramref name="entry"/>, in the trace its producer started. Begun before the
    /// begin, and ended by the caller after its own lines about a failure: the begin's Redis calls and every line about the
    /// run (retried through an outage, a lease held by another, a paused target, a failure) are in the run's trace, and a
    /// run dead-lettered without a try has its span as one posted has.
    /// </summary>
    public static Activity? StartSpan(DeliveryEntry entry, bool claimed)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var activity = StartActivity(entry);
        if (claimed)
        {
            activity?.SetTag(PortAzureDiagnostics.Tags.Reclaimed, true);
        }
        return activity;
    }

    /// <summary>Marks the span of a processing that failed: the type only (the caller's line has the message).</summary>
    public static void SpanFailed(Activity? activity, Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        activity?.SetTag(PortAzureDiagnostics.Tags.ErrorType, exception.GetType().FullName);
        activity?.SetStatus(ActivityStatusCode.Error, exception.GetType().Name);
    }

    private static Activity? StartActivity(DeliveryEntry entry)
    {
        const string operation = "process";
        var parent = default(ActivityContext);
        if (entry.TraceParent is not null)
        {
            var carrier = new Dictionary<string, string> { ["traceparent"] = entry.TraceParent };
            if (entry.TraceState is not null)
            {
                carrier["tracestate"] = entry.TraceState;
            }
            parent = Propagators.DefaultTextMapPropagator.Extract(default, carrier,
                static (c, key) => c.TryGetValue(key, out var value) ? [value] : []).ActivityContext;
        }
        var activity = PortAzureDiagnostics.ActivitySource.StartActivity($"{operation} {RedisKeys.Stream}", ActivityKind.Consumer, parent);
        if (activity is null)
        {
            return null;
        }
        activity.SetTag(PortAzureDiagnostics.Tags.MessagingSystem, PortAzureDiagnostics.RedisStreams);
        activity.SetTag(PortAzureDiagnostics.Tags.MessagingDestination, RedisKeys.Stream);
        activity.SetTag(PortAzureDiagnostics.Tags.MessagingOperationType, operation);
        activity.SetTag(PortAzureDiagnostics.Tags.MessagingOperationName, operation);
        activity.SetTag(PortAzureDiagnostics.Tags.MessagingConsumerGroup, RedisKeys.ConsumerGroup);
        // The producer's id for it, on every attempt: the stream entry's id names only the first (a retry comes from the
        // schedule), and the producer cannot know it before the entry is written.
        activity.SetTag(PortAzureDiagnostics.Tags.MessagingMessageId, entry.DeliveryId);
        activity.SetTag(PortAzureDiagnostics.Tags.DeliveryId, entry.DeliveryId);
        activity.SetTag(PortAzureDiagnostics.Tags.RunId, entry.RunId);
        if (entry.Replays > 0)
        {
            activity.SetTag(PortAzureDiagnostics.Tags.Replays, entry.Replays);
        }
        activity.SetTag(PortAzureDiagnostics.Tags.Org, entry.Org);
        activity.SetTag(PortAzureDiagnostics.Tags.Webhook, entry.Webhook);
        return activity;
    }

    /// <summary>The outcome a processing span carries when nothing was posted (a try's is its <see cref="AttemptOutcome"/>).</summary>
    private static class NotPosted
    {
        public const string AlreadyFinished = "already_finished";
        public const string LeaseHeld = "lease_held";
        public const string TargetPaused = "target_paused";
        public const string Stopped = "stopped";
        public const string DeadLettered = "dead_lettered";
    }

    private static KeyValuePair<string, RedisValue>[] IdentityFields(DeliveryEntry entry) =>
    [
        new(DeliveryRecord.Org, entry.Org),
        new(DeliveryRecord.Webhook, entry.Webhook),
        new(DeliveryRecord.IdempotencyKey, entry.IdempotencyKey),
        new(DeliveryRecord.RunId, entry.RunId ?? ""),
        new(DeliveryRecord.ReceivedAt, entry.ReceivedAt.ToUnixTimeMilliseconds()),
        new(DeliveryRecord.TraceParent, entry.TraceParent ?? ""),
        new(DeliveryRecord.TraceState, entry.TraceState ?? ""),
    ];

    /// <summary>Everything needed to rebuild the entry once it leaves the stream, body included.</summary>
    internal static KeyValuePair<string, RedisValue>[] EntryFields(DeliveryEntry entry, string state, DateTimeOffset now) =>
    [
        .. IdentityFields(entry),
        new(DeliveryRecord.Body, entry.Body),
        new(DeliveryRecord.State, state),
        new(DeliveryRecord.UpdatedAt, now.ToUnixTimeMilliseconds()),
    ];

    private string AttemptJson(int attempt, DateTimeOffset at, AttemptResult result) => JsonSerializer.Serialize(new AttemptRecord(
        attempt, at, result.StatusCode, result.Outcome.ToString().ToLowerInvariant(), (long)result.Duration.TotalMilliseconds,
        result.Excerpt, result.Error, identity.Name), AttemptRecord.JsonOptions);

    private static partial class Log
    {
        // Debug, as the Ingress's "Accepted run" (a line per run is CPU per run, docs/benchmarks.md): the span,
        // the metrics and the attempt log show every delivery. Retries and dead letters stay above Debug.
        [LoggerMessage(EventIds.Delivered, LogLevel.Debug, "Delivered {DeliveryId} to {Org}/{Webhook}: {StatusCode} on attempt {Attempt}")]
        public static partial void Delivered(ILogger logger, string deliveryId, string org, string webhook, int statusCode, int attempt);

        [LoggerMessage(EventIds.RetryScheduled, LogLevel.Warning, "Delivery {DeliveryId} failed ({StatusClass}) on attempt {Attempt}; next attempt at {DueAt:o}")]
        public static partial void RetryScheduled(ILogger logger, string deliveryId, string statusClass, int attempt, DateTimeOffset dueAt);

        [LoggerMessage(EventIds.DeadLettered, LogLevel.Error, "Dead-lettered {DeliveryId} for {Org}/{Webhook}: {Reason} (last status {StatusCode})")]
        public static partial void DeadLettered(ILogger logger, string deliveryId, string org, string webhook, string reason, int statusCode);

        [LoggerMessage(EventIds.LeaseHeld, LogLevel.Debug, "Delivery {DeliveryId} is leased by another consumer; left to it")]
        public static partial void LeaseHeld(ILogger logger, string deliveryId);

        [LoggerMessage(EventIds.AlreadyFinished, LogLevel.Information, "Delivery {DeliveryId} is already {State}; this copy is dropped without posting")]
        public static partial void AlreadyFinished(ILogger logger, string deliveryId, string state);

        [LoggerMessage(EventIds.TargetPaused, LogLevel.Warning, "Target {Org}/{Webhook} paused after {Failures} transient failures with no success between them")]
        public static partial void TargetPaused(ILogger logger, string org, string webhook, long failures);

        [LoggerMessage(EventIds.NotPostedAtStop, LogLevel.Information, "Delivery {DeliveryId} was not posted: the Dispatcher is stopping; it is left to another Dispatcher")]
        public static partial void NotPostedAtStop(ILogger logger, string deliveryId);

        [LoggerMessage(EventIds.ReportNotQueued, LogLevel.Error,
            "The Port report of delivery {DeliveryId} could not be queued ({Error}); the delivery's outcome is recorded, Port gets no line for it")]
        public static partial void ReportNotQueued(ILogger logger, string deliveryId, string error);

        [LoggerMessage(EventIds.RedisRetry, LogLevel.Warning, "Redis failed at step {Step} of {DeliveryId}; retrying")]
        public static partial void RedisRetry(ILogger logger, Exception exception, string step, string deliveryId);

        [LoggerMessage(EventIds.RedisFullRetry, LogLevel.Debug, "Redis is out of memory at step {Step} of {DeliveryId}; retrying")]
        public static partial void RedisFullRetry(ILogger logger, string step, string deliveryId);

        [LoggerMessage(EventIds.FinishFailedUnexpectedly, LogLevel.Error,
            "Recording step {Step} of {DeliveryId} failed unexpectedly; retrying until the attempt's lease is nearly out, then the run may be posted again")]
        public static partial void FinishFailedUnexpectedly(ILogger logger, Exception exception, string step, string deliveryId);
    }
}

/// <summary>One attempt as kept in the delivery's attempt list and shown by the operator API.</summary>
internal sealed record AttemptRecord(int Attempt, DateTimeOffset At, int? Status, string Outcome, long DurationMs, string Excerpt, string? Error, string Consumer)
{
    public static readonly JsonSerializerOptions JsonOptions = new(JsonSerializerDefaults.Web);
}
