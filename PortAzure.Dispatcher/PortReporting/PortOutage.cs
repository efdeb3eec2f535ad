namespace PortAzure.Dispatcher.PortReporting;

/// <summary>
/// Whether Port's API is failing every report tried: the reports then wait without spending their attempts, so no
/// failure count moves, and this is how an operator learns of it (a Warning, /health Degraded). Thread-safe.
/// </summary>
internal sealed class PortOutage(TimeProvider timeProvider)
{
    /// <summary>
    /// Failures further apart than this are not one outage: every report waiting in one retries at least every 2 min.
    /// </summary>
    internal static readonly TimeSpan Gap = TimeSpan.FromMinutes(3);

    /// <summary>How long Port must fail every report before it is called an outage: a blip, or one report failing alone for
    /// a few tries in a quiet period, is not worth an alert.</summary>
    internal static readonly TimeSpan FailingFor = TimeSpan.FromMinutes(5);

    private readonly Lock _gate = new();

    // Measured on the monotonic clock (a wall clock stepped back would hide an outage for the step, one stepped forward
    // would cut it short); the wall time of its start is kept only to be shown.
    private long? _sinceStamp;
    private DateTimeOffset _since;
    private long _lastStamp;
    // How long after the last failure the outage still counts as going on: Gap, or longer when that failure's report
    // waits longer before its next try (a 429's Retry-After of up to 5 min).
    private TimeSpan _lastGap = Gap;
    private bool _announced;

    /// <summary>
    /// Since when Port has failed every report tried, once that has lasted <see cref="FailingFor"/>; null otherwise, once
    /// Port takes a report, or when no such failure came for <see cref="Gap"/>, or a minute past the next try the last one announced (nothing left waiting).
    /// </summary>
    public DateTimeOffset? Since
    {
        get
        {
            lock (_gate)
            {
                return _sinceStamp is { } since && timeProvider.GetElapsedTime(_lastStamp) <= _lastGap && timeProvider.GetElapsedTime(since) >= FailingFor
                    ? _since
                    : null;
            }
        }
    }

    /// <summary>A report failed (just now), and Port took no other since its previous try: Port looks to be failing for everyone.</summary>
    /// <param name="nextTryIn">When the report will be tried again, when that can be later than <see cref="Gap"/> allows (a
    /// 429's Retry-After): the outage goes on until a minute past it.</param>
    /// <returns>Since when, the first time this makes it an outage (<see cref="FailingFor"/> reached); else null.</returns>
    public DateTimeOffset? Failed(TimeSpan? nextTryIn = null)
    {
        lock (_gate)
        {
            var now = timeProvider.GetTimestamp();
            if (_sinceStamp is null || timeProvider.GetElapsedTime(_lastStamp, now) > _lastGap)
            {
                (_sinceStamp, _since, _announced) = (now, timeProvider.GetUtcNow(), false);
            }
            _lastStamp = now;
            _lastGap = nextTryIn is { } next && next + TimeSpan.FromMinutes(1) > Gap ? next + TimeSpan.FromMinutes(1) : Gap;
            if (_announced || timeProvider.GetElapsedTime(_sinceStamp.Value, now) < FailingFor)
            {
                return null;
            }
            _announced = true;
            return _since;
        }
    }

    /// <summary>Port took a report: any outage is over.</summary>
    /// <returns>How long the outage lasted, when one was announced and still under way; else null.</returns>
    public TimeSpan? Ended()
    {
        lock (_gate)
        {
            TimeSpan? lasted = _announced && _sinceStamp is { } since && timeProvider.GetElapsedTime(_lastStamp) <= _lastGap
                ? timeProvider.GetElapsedTime(since)
                : null;
            (_sinceStamp, _announced) = (null, false);
            return lasted;
        }
    }
}
