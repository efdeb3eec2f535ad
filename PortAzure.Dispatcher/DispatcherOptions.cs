using Microsoft.Extensions.Options;
using PortAzure.Dispatcher.PortReporting;

namespace PortAzure.Dispatcher;

/// <summary>How the Dispatcher reads, posts and retries (<c>Dispatcher:*</c>).</summary>
internal sealed class DispatcherOptions
{
    public const string SectionName = "Dispatcher";

    /// <summary>Deliveries in flight at once in this instance.</summary>
    public int MaxConcurrency { get; set; } = 16;

    /// <summary>This instance's consumer name in the group; unique per process when not set.</summary>
    public string? ConsumerName { get; set; }

    /// <summary>Safety-net poll when no wake-up message arrives; also the retry schedule's resolution.</summary>
    public double PollIntervalSeconds { get; set; } = 1;

    /// <summary>One POST to Azure gives up after this long (a transient failure).</summary>
    /// <remarks>
    /// Below <see cref="ShutdownGraceSeconds"/> by default: a stop then waits for every POST under way to end on its
    /// own. A POST cut short at the end of the grace may have reached Azure, and is posted again by another replica.
    /// </remarks>
    public double RequestTimeoutSeconds { get; set; } = 15;

    /// <summary>Added to the request timeout for leases and for reclaiming a crashed consumer's entries.</summary>
    public double ClaimMarginSeconds { get; set; } = 15;

    /// <summary>
    /// Once Azure has answered, how long an attempt keeps trying to record the result while Redis is away. The
    /// attempt's lease covers it, so no other replica posts the run again meanwhile; the price is that a run whose
    /// Dispatcher crashed mid-attempt is posted again only once that lease has run out.
    /// </summary>
    public double FinishRetrySeconds { get; set; } = 60;

    public double ClaimIntervalSeconds { get; set; } = 5;

    /// <summary>An entry reclaimed from crashed consumers more often than this is poison.</summary>
    public int MaxClaims { get; set; } = 5;

    /// <summary>The most <see cref="ShutdownGraceSeconds"/> may be.</summary>
    public const double MaxShutdownGraceSeconds = 300;

    /// <summary>On shutdown, how long in-flight POSTs may still take.</summary>
    public double ShutdownGraceSeconds { get; set; } = 20;

    /// <summary>How long a delivered delivery's record stays queryable.</summary>
    public int DeliveredRetentionHours { get; set; } = 168;

    /// <summary>
    /// A Port report taken by a reporter that stopped (crash, or shutdown while Port's API was down) is
    /// taken over after this long. A live reporter resets the report's idle time after each wait, so this
    /// must exceed the longest time between two touches: the longest wait (a 429's Retry-After, honoured up to 5 min),
    /// up to 10 s queued for one of the <see cref="PortMaxConcurrentCalls"/> (a longer queue is followed by a touch), and one
    /// try (a token call and the POST, <see cref="PortRequestTimeoutSeconds"/> each): about 6 min at the defaults; 10 min
    /// leaves room. Below that a report would be sent twice. (Tests set a few seconds; the validator allows it.)
    /// </summary>
    public double PortReportReclaimSeconds { get; set; } = 900;

    /// <summary>
    /// One call to Port's API (the token call, a run's log line) gives up after this long, and the report is retried. A call
    /// given up on may still be applied by Port: a Port slower than this, but taking every call, shows a run's line again
    /// at every retry. Raise it where Port is that slow from the relay's network.
    /// </summary>
    public double PortRequestTimeoutSeconds { get; set; } = 15;

    /// <summary>
    /// Calls to Port's API at once per Dispatcher (reports held waiting take none). With Port answering in 300 ms, 16
    /// report about 50 runs a second per replica; past that, reports wait in their stream.
    /// </summary>
    public int PortMaxConcurrentCalls { get; set; } = 16;

    /// <summary>/health reports Degraded when the oldest queued entry is older than this.</summary>
    public double BacklogDegradedSeconds { get; set; } = 300;

    public RetryOptions Retry { get; set; } = new();

    public TargetHealthOptions TargetHealth { get; set; } = new();

    public TimeSpan RequestTimeout => TimeSpan.FromSeconds(RequestTimeoutSeconds);

    /// <summary>
    /// An attempt's lease (and a claimed retry's): a live POST always ends (times out), and so do the retries of
    /// its result's recording, before it runs out. Another replica that reclaims the entry meanwhile finds the
    /// lease held and leaves it; with <see cref="FinishRetrySeconds"/> at 0 the lease has run out by the time
    /// <see cref="ClaimMinIdle"/> lets it reclaim (half the margin; the lease is taken just after the entry is read).
    /// </summary>
    public TimeSpan LeaseDuration => TimeSpan.FromSeconds(RequestTimeoutSeconds + FinishRetrySeconds + (ClaimMarginSeconds / 2));

    public TimeSpan FinishRetryWindow => TimeSpan.FromSeconds(FinishRetrySeconds);

    /// <summary>A pending entry is reclaimed from its consumer only after being idle this long.</summary>
    public TimeSpan ClaimMinIdle => TimeSpan.FromSeconds(RequestTimeoutSeconds + ClaimMarginSeconds);
}

internal sealed class RetryOptions
{
    public double InitialDelaySeconds { get; set; } = 1;
    public double Multiplier { get; set; } = 2;
    public double MaxDelaySeconds { get; set; } = 600;
    public int MaxAttempts { get; set; } = 10;
    public double MaxAgeHours { get; set; } = 24;

    /// <summary>Each delay is spread by up to this fraction either way.</summary>
    public double JitterFraction { get; set; } = 0.2;
}

internal sealed class TargetHealthOptions
{
    /// <summary>Consecutive transient failures of one target that pause it.</summary>
    public int FailureThreshold { get; set; } = 20;

    /// <summary>While paused, one delivery probes the target this often.</summary>
    public double ProbeIntervalSeconds { get; set; } = 30;
}

internal sealed class DispatcherOptionsValidator : IValidateOptions<DispatcherOptions>
{
    private const int MaxRetentionHours = 24 * 365 * 10;

    public ValidateOptionsResult Validate(string? name, DispatcherOptions options)
    {
        var errors = new List<string>();
        void Check(bool ok, string message)
        {
            if (!ok)
            {
                errors.Add(message);
            }
        }
        Check(options.MaxConcurrency is >= 1 and <= 1024, "Dispatcher:MaxConcurrency must be between 1 and 1024.");
        Check(options.PollIntervalSeconds is > 0 and <= 60, "Dispatcher:PollIntervalSeconds must be in (0, 60].");
        Check(options.RequestTimeoutSeconds is > 0 and <= 300, "Dispatcher:RequestTimeoutSeconds must be in (0, 300].");
        Check(options.ClaimMarginSeconds is >= 1 and <= 600, "Dispatcher:ClaimMarginSeconds must be between 1 and 600.");
        Check(options.FinishRetrySeconds is >= 0 and <= 3600, "Dispatcher:FinishRetrySeconds must be between 0 and 3600.");
        Check(options.ClaimIntervalSeconds is > 0 and <= 600, "Dispatcher:ClaimIntervalSeconds must be in (0, 600].");
        Check(options.MaxClaims is >= 1 and <= 100, "Dispatcher:MaxClaims must be between 1 and 100.");
        Check(options.ShutdownGraceSeconds is >= 0 and <= DispatcherOptions.MaxShutdownGraceSeconds, $"Dispatcher:ShutdownGraceSeconds must be between 0 and {DispatcherOptions.MaxShutdownGraceSeconds}.");
        // Upper bounds everywhere: a value past them ("keep forever" as int.MaxValue, Infinity) passed here once and then
        // threw in TimeSpan arithmetic after Azure's 2xx, which left the run to be posted again.
        Check(options.DeliveredRetentionHours is >= 1 and <= MaxRetentionHours, $"Dispatcher:DeliveredRetentionHours must be between 1 and {MaxRetentionHours}.");
        Check(options.BacklogDegradedSeconds is > 0 and <= 604800, "Dispatcher:BacklogDegradedSeconds must be in (0, 604800].");
        Check(options.PortReportReclaimSeconds is >= 1 and <= 86400, "Dispatcher:PortReportReclaimSeconds must be between 1 and 86400.");
        Check(options.PortRequestTimeoutSeconds is > 0 and <= 120, "Dispatcher:PortRequestTimeoutSeconds must be in (0, 120].");
        Check(options.PortMaxConcurrentCalls is >= 1 and <= PortReportingService.MaxHeld,
            $"Dispatcher:PortMaxConcurrentCalls must be between 1 and {PortReportingService.MaxHeld}.");
        Check(options.ConsumerName is null || (options.ConsumerName.Length is > 0 and <= 200 && !options.ConsumerName.Any(char.IsWhiteSpace)),
            "Dispatcher:ConsumerName must be 1 to 200 characters without spaces.");
        var retry = options.Retry;
        Check(retry.InitialDelaySeconds is > 0 and <= 3600, "Dispatcher:Retry:InitialDelaySeconds must be in (0, 3600].");
        Check(retry.Multiplier is >= 1 and <= 10, "Dispatcher:Retry:Multiplier must be between 1 and 10.");
        Check(retry.MaxDelaySeconds >= retry.InitialDelaySeconds && retry.MaxDelaySeconds <= 86400,
            "Dispatcher:Retry:MaxDelaySeconds must be at least InitialDelaySeconds and at most 86400.");
        Check(retry.MaxAttempts is >= 1 and <= 100, "Dispatcher:Retry:MaxAttempts must be between 1 and 100.");
        Check(retry.MaxAgeHours is > 0 and <= 8760, "Dispatcher:Retry:MaxAgeHours must be in (0, 8760].");
        Check(retry.JitterFraction is >= 0 and < 1, "Dispatcher:Retry:JitterFraction must be in [0, 1).");
        Check(options.TargetHealth.FailureThreshold is >= 1 and <= 1_000_000, "Dispatcher:TargetHealth:FailureThreshold must be between 1 and 1000000.");
        Check(options.TargetHealth.ProbeIntervalSeconds is > 0 and <= 3600, "Dispatcher:TargetHealth:ProbeIntervalSeconds must be in (0, 3600].");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
