namespace PortAzure.Dispatcher.Retry;

/// <summary>
/// Exponential backoff with jitter, capped; <c>Retry-After</c> wins when given (clamped to the cap).
/// Gives up after <see cref="RetryOptions.MaxAttempts"/> attempts or <see cref="RetryOptions.MaxAgeHours"/>.
/// </summary>
internal sealed class RetryPolicy(RetryOptions options, Func<double>? random = null)
{
    private readonly Func<double> _random = random ?? Random.Shared.NextDouble;

    /// <summary>The wait before the attempt after <paramref name="attempt"/> (1-based), or null when out of budget.</summary>
    public DateTimeOffset? NextAttemptAt(int attempt, DateTimeOffset now, DateTimeOffset since, TimeSpan? retryAfter)
    {
        if (attempt >= options.MaxAttempts)
        {
            return null;
        }
        var due = now + Delay(attempt, retryAfter);
        return due - since > TimeSpan.FromHours(options.MaxAgeHours) ? null : due;
    }

    public TimeSpan Delay(int attempt, TimeSpan? retryAfter)
    {
        var cap = TimeSpan.FromSeconds(options.MaxDelaySeconds);
        if (retryAfter is { } asked)
        {
            return asked < TimeSpan.Zero ? TimeSpan.Zero : asked > cap ? cap : asked;
        }
        var exponent = Math.Min(attempt - 1, 60);
        var seconds = Math.Min(options.MaxDelaySeconds, options.InitialDelaySeconds * Math.Pow(options.Multiplier, exponent));
        var jitter = 1 + (options.JitterFraction * ((2 * _random()) - 1));
        return TimeSpan.FromSeconds(Math.Min(options.MaxDelaySeconds, seconds * jitter));
    }
}
