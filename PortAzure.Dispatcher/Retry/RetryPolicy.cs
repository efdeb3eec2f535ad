namespace PortAzure.Dispatcher.Retry;

/// <summary>
/// Exponential backoff with jitter, capped; a <c>Retry-After</c> longer than the backoff is waited out,
/// spread after it by the jitter (within the cap).
/// Gives up after <see cref="RetryOptions.MaxAttempts"/> attempts or <see cref="RetryOptions.MaxAgeHours"/>.
/// </summary>
internal sealed class RetryPolicy(RetryOptions options, Func<double>? random = null)
{
    private readonly Func<double> _random = random ?? Random.Shared.NextDouble;

    /// <summary>The wait before the attempt after <paramref name="attempt"/> (1-based), or null when out of budget.</summary>
    public DateTimeOffset? NextAttemptAt(int attempt, DateTimeOffset now, DateTimeOffset since, TimeSpan? retryAfter) =>
        NextAttemptAt(attempt, attempt, now, since, retryAfter);

    /// <summary>
    /// As above, for a round in which some tries spent no attempt: <paramref name="spent"/> is held against
    /// <see cref="RetryOptions.MaxAttempts"/>, and the backoff grows with every <paramref name="tries"/>.
    /// </summary>
    public DateTimeOffset? NextAttemptAt(int spent, int tries, DateTimeOffset now, DateTimeOffset since, TimeSpan? retryAfter) =>
        spent >= options.MaxAttempts ? null : WithinAge(now + Delay(tries, retryAfter), since);

    /// <summary><paramref name="due"/>, or null when it lies past the retry age.</summary>
    public DateTimeOffset? WithinAge(DateTimeOffset due, DateTimeOffset since) =>
        due - since > TimeSpan.FromHours(options.MaxAgeHours) ? null : due;

    public TimeSpan Delay(int attempt, TimeSpan? retryAfter)
    {
        var cap = TimeSpan.FromSeconds(options.MaxDelaySeconds);
        var exponent = Math.Min(attempt - 1, 60);
        var seconds = Math.Min(options.MaxDelaySeconds, options.InitialDelaySeconds * Math.Pow(options.Multiplier, exponent));
        var jitter = 1 + (options.JitterFraction * ((2 * _random()) - 1));
        var backoff = TimeSpan.FromSeconds(Math.Min(options.MaxDelaySeconds, seconds * jitter));
        // Retry-After is when the target will take the call again at the earliest, not a promise it will succeed: a
        // shorter one (a proxy's "Retry-After: 0") must not take the backoff away, or a target that keeps answering
        // so spends the whole attempt budget within seconds and its runs are dead-lettered.
        if (retryAfter is not { } asked || asked <= backoff)
        {
            return backoff;
        }
        // Every run a throttled target refused in one burst carries the same Retry-After: spread them after it (never
        // before it), or they all come due in the same instant and are throttled again together. Near the cap, inside the
        // room left below it; past the cap, below the cap (the cap already comes before Retry-After).
        var r = _random();
        if (asked >= cap)
        {
            return cap - TimeSpan.FromTicks((long)(cap.Ticks * options.JitterFraction * r));
        }
        var spread = TimeSpan.FromTicks((long)(asked.Ticks * options.JitterFraction * r));
        return asked + spread > cap ? asked + TimeSpan.FromTicks((long)((cap - asked).Ticks * r)) : asked + spread;
    }
}
