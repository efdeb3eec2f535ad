using System.Globalization;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Dispatcher.Diagnostics;

/// <summary>One reading of the relay's queues.</summary>
internal sealed record BacklogSnapshot(long StreamLength, long Pending, long ScheduledRetries, long DeadLetters, long PausedTargets, TimeSpan OldestAge)
{
    public static readonly BacklogSnapshot Empty = new(0, 0, 0, 0, 0, TimeSpan.Zero);
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
        batch.Execute();
        long pending = 0;
        try
        {
            pending = (await groups).FirstOrDefault(g => g.Name == RedisKeys.ConsumerGroup).PendingMessageCount;
        }
        catch (RedisServerException)
        {
            // No stream yet.
        }
        var oldestEntries = await oldest;
        var age = TimeSpan.Zero;
        if (oldestEntries.Length > 0 && long.TryParse(oldestEntries[0].Id.ToString().Split('-')[0], out var ms))
        {
            age = timeProvider.GetUtcNow() - DateTimeOffset.FromUnixTimeMilliseconds(ms);
        }
        Current = new BacklogSnapshot(await length, pending, await retries, await dead, PausesInEffect(await paused), age < TimeSpan.Zero ? TimeSpan.Zero : age);
        return Current;
    }

    /// <summary>
    /// Pauses whose probe time is recent or ahead. A pause is lifted only by a success, so one whose deliveries were all
    /// dead-lettered (or a target nobody sends to any more) stayed counted for good, and the paused-targets alert with it.
    /// While deliveries wait behind a pause, a Dispatcher takes the probe within a probe interval and a poll of its due
    /// time, which moves it ahead; one not taken for two intervals and a minute has nothing waiting behind it (the next
    /// delivery to the target is its probe). A probe time that is not a number counts: the next begin repairs it.
    /// </summary>
    private long PausesInEffect(HashEntry[] pauses)
    {
        var staleBefore = timeProvider.GetUtcNow().ToUnixTimeMilliseconds()
            - (long)((2 * options.CurrentValue.TargetHealth.ProbeIntervalSeconds) + 60) * 1000;
        return pauses.LongCount(p => !long.TryParse((string?)p.Value, NumberStyles.None, CultureInfo.InvariantCulture, out var probeAt) || probeAt >= staleBefore);
    }

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
        return Task.FromResult(snapshot.OldestAge > threshold
            ? HealthCheckResult.Degraded($"The oldest queued run has waited {snapshot.OldestAge.TotalSeconds:F0} s (threshold {threshold.TotalSeconds:F0} s).", data: data)
            : HealthCheckResult.Healthy("Backlog within bounds.", data));
    }
}
