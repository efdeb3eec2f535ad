using System.Globalization;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Dispatcher.Diagnostics;

/// <summary>One reading of the relay's queues.</summary>
/// <param name="PortReports">Reports to Port waiting to be sent or retried: its stream keeps the newest 100,000, so a long
/// Port outage at a high rate loses the oldest without a line unless this is watched.</param>
/// <param name="DamagedKeys">The keys read that hold another type (damaged, or written by something else): counted as 0.</param>
internal sealed record BacklogSnapshot(long StreamLength, long Pending, long ScheduledRetries, long DeadLetters, long PausedTargets, TimeSpan OldestAge,
    long PortReports, IReadOnlyList<string> DamagedKeys)
{
    public static readonly BacklogSnapshot Empty = new(0, 0, 0, 0, 0, TimeSpan.Zero, 0, []);
}

/// <summary>
/// Reads the backlog from Redis every few seconds for the gauges and the health check (observable
/// instruments are read synchronously; they must not wait on Redis).
/// </summary>
internal sealed class BacklogMonitor(IConnectionMultiplexer redis, TimeProvider timeProvider, IOptionsMonitor<DispatcherOptions> options) : BackgroundService
{
    private static readonly TimeSpan Interval = TimeSpan.FromSeconds(5);

    public BacklogSnapshot Current { get; private set; } = BacklogSnapshot.Empty;

    public async Task<BacklogSnapshot> ReadAsync()
    {
        var db = redis.GetDatabase();
        var batch = db.CreateBatch();
        var length = batch.StreamLengthAsync(RedisKeys.Stream);
        var oldest = batch.StreamRangeAsync(RedisKeys.Stream, "-", "+", 1);
        var retries = batch.SortedSetLengthAsync(RedisKeys.RetrySchedule);
        var dead = batch.SortedSetLengthAsync(RedisKeys.DeadLetters);
        var paused = batch.HashGetAllAsync(RedisKeys.PausedTargets);
        var groups = batch.StreamGroupInfoAsync(RedisKeys.Stream);
        var reports = batch.StreamLengthAsync(RedisKeys.PortReports);
        batch.Execute();
        // Each key on its own: one of another type failed the whole reading, and the health check went on with the last one
        // (Healthy) while a damaged schedule stopped every delivery.
        var damaged = new List<string>();
        long pending = 0;
        try
        {
            pending = (await groups).FirstOrDefault(g => g.Name == RedisKeys.ConsumerGroup).PendingMessageCount;
        }
        catch (RedisServerException)
        {
            // No stream yet, or one of another type: the stream's own reads below name it.
        }
        var oldestEntries = await OrDamagedAsync(oldest, RedisKeys.Stream, [], damaged);
        var age = TimeSpan.Zero;
        if (oldestEntries.Length > 0 && long.TryParse(oldestEntries[0].Id.ToString().Split('-')[0], out var ms))
        {
            age = timeProvider.GetUtcNow() - DateTimeOffset.FromUnixTimeMilliseconds(ms);
        }
        var streamLength = await OrDamagedAsync(length, RedisKeys.Stream, 0, damaged);
        var scheduled = await OrDamagedAsync(retries, RedisKeys.RetrySchedule, 0, damaged);
        var deadLetters = await OrDamagedAsync(dead, RedisKeys.DeadLetters, 0, damaged);
        var pauses = await OrDamagedAsync(paused, RedisKeys.PausedTargets, [], damaged);
        var portReports = await OrDamagedAsync(reports, RedisKeys.PortReports, 0, damaged);
        Current = new BacklogSnapshot(streamLength, pending, scheduled, deadLetters, PausesInEffect(pauses), age < TimeSpan.Zero ? TimeSpan.Zero : age,
            portReports, [.. damaged.Distinct(StringComparer.Ordinal)]);
        return Current;
    }

    private static async Task<T> OrDamagedAsync<T>(Task<T> read, string key, T none, List<string> damaged)
    {
        try
        {
            return await read;
        }
        catch (RedisServerException ex) when (RedisFailures.IsWrongType(ex))
        {
            damaged.Add(key);
            return none;
        }
    }

    /// <summary>
    /// Pauses whose probe time is recent or ahead. A pause is lifted only by a success, so one whose deliveries were all
    /// dead-lettered (or a target nobody sends to any more) stayed counted for good, and the paused-targets alert with it.
    /// A delivery waiting behind a pause comes back within <see cref="StaleAfter"/> of its probe time and takes the next
    /// probe, which moves it ahead; a probe time older than that has nothing waiting behind it (the next delivery to the
    /// target is its probe). A probe time that is not a number counts: the next begin repairs it.
    /// </summary>
    private long PausesInEffect(HashEntry[] pauses)
    {
        var staleBefore = (timeProvider.GetUtcNow() - StaleAfter(options.CurrentValue)).ToUnixTimeMilliseconds();
        return pauses.LongCount(p => !long.TryParse((string?)p.Value, NumberStyles.None, CultureInfo.InvariantCulture, out var probeAt) || probeAt >= staleBefore);
    }

    /// <summary>
    /// The longest a waiting delivery leaves a pause's probe time untouched: a held one is due within a probe interval of
    /// it, but a probe that failed goes back after a probe interval or two, or its Retry-After, or (a 429, or an answer that
    /// may be lost) its own backoff, all up to Retry:MaxDelaySeconds;
    /// then a poll of the schedule, a POST, another probe interval and a minute of margin. 12 min at the defaults.
    /// </summary>
    internal static TimeSpan StaleAfter(DispatcherOptions options) => TimeSpan.FromSeconds(
        Math.Max(options.TargetHealth.ProbeIntervalSeconds, options.Retry.MaxDelaySeconds) + options.TargetHealth.ProbeIntervalSeconds
        + options.PollIntervalSeconds + options.RequestTimeoutSeconds + 60);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Interval, timeProvider);
        do
        {
            try
            {
                await ReadAsync();
            }
            catch (Exception ex) when (RedisFailures.IsFailure(ex))
            {
                // The Redis health check reports this; the gauges keep their last reading.
            }
        }
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false));
    }
}

/// <summary>Degraded when the oldest entry waits longer than <c>Dispatcher:BacklogDegradedSeconds</c>.</summary>
internal sealed class BacklogHealthCheck(BacklogMonitor monitor, IOptionsMonitor<DispatcherOptions> options) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var snapshot = monitor.Current;
        var threshold = TimeSpan.FromSeconds(options.CurrentValue.BacklogDegradedSeconds);
        var data = new Dictionary<string, object>
        {
            ["stream_length"] = snapshot.StreamLength,
            ["oldest_age_seconds"] = snapshot.OldestAge.TotalSeconds,
        };
        if (snapshot.DamagedKeys.Count > 0)
        {
            // Degraded, not Unhealthy: a restart mends nothing, and the Dispatcher still serves what it can.
            data["damaged_keys"] = string.Join(",", snapshot.DamagedKeys);
            return Task.FromResult(HealthCheckResult.Degraded(
                $"Redis keys of another type (damaged, or written by something else): {string.Join(", ", snapshot.DamagedKeys)}. Deliveries may stop until they are mended (docs/deploy.md, event 2103).",
                data: data));
        }
        return Task.FromResult(snapshot.OldestAge > threshold
            ? HealthCheckResult.Degraded($"The oldest queued run has waited {snapshot.OldestAge.TotalSeconds:F0} s (threshold {threshold.TotalSeconds:F0} s).", data: data)
            : HealthCheckResult.Healthy("Backlog within bounds.", data));
    }
}
