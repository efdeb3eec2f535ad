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
    private DateTimeOffset? _since;
    private DateTimeOffset _last;
    private bool _announced;

    /// <summary>
    /// Since when Port has failed every report tried, once that has lasted <see cref="FailingFor"/>; null otherwise, once
    /// Port takes a report, or when no such failure came for <see cref="Gap"/> (nothing left waiting).
    /// </summary>
    public DateTimeOffset? Since
    {
        get
        {
            lock (_gate)
            {
                var now = timeProvider.GetUtcNow();
                return _since is { } since && now - _last <= Gap && now - since >= FailingFor ? since : null;
            }
        }
    }

    /// <summary>A report failed, and Port took no other since its previous try: Port looks to be failing for everyone.</summary>
    /// <returns>Since when, the first time this makes it an outage (<see cref="FailingFor"/> reached); else null.</returns>
    public DateTimeOffset? Failed(DateTimeOffset at)
    {
        lock (_gate)
        {
            if (_since is null || at - _last > Gap)
            {
                _since = at;
                _announced = false;
            }
            _last = at;
            if (_announced || at - _since < FailingFor)
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
            var now = timeProvider.GetUtcNow();
            TimeSpan? lasted = _announced && now - _last <= Gap ? now - _since : null;
            (_since, _announced) = (null, false);
            return lasted;
        }
    }
}
