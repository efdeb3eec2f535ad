using Microsoft.Extensions.Options;

namespace PortAzure.Ingress.Edge;

/// <summary>Abuse limits on the webhook route (<c>Ingress:RateLimit:*</c>).</summary>
internal sealed class RateLimitOptions
{
    public const string SectionName = "Ingress:RateLimit";

    public bool Enabled { get; set; } = true;

    /// <summary>Sustained webhook calls per second from one client address.</summary>
    public int PermitsPerSecondPerClient { get; set; } = 200;

    /// <summary>Calls one client may make at once after being quiet (the bucket's size).</summary>
    public int Burst { get; set; } = 400;

    /// <summary>Sustained webhook calls per second from all clients together.</summary>
    public int GlobalPermitsPerSecond { get; set; } = 5000;

    /// <summary>Calls all clients together may make at once after a quiet spell.</summary>
    public int GlobalBurst { get; set; } = 10_000;

    /// <summary>
    /// Webhook calls one client address may have between the start of their body read and the end of their signature
    /// check (<see cref="WebhookOpenCalls"/>): with up to <c>Ingress:MaxBodyBytes</c> each held before anyone knows who
    /// sent it, this bounds the memory one address can hold. Past it: 429, as for the bucket.
    /// </summary>
    public int ConcurrentCallsPerClient { get; set; } = 100;
}

internal sealed class RateLimitOptionsValidator : IValidateOptions<RateLimitOptions>
{
    private const int Ceiling = 1_000_000;

    public ValidateOptionsResult Validate(string? name, RateLimitOptions options)
    {
        var errors = new List<string>();
        if (options.PermitsPerSecondPerClient is < 1 or > Ceiling)
        {
            errors.Add($"{RateLimitOptions.SectionName}:PermitsPerSecondPerClient must be between 1 and {Ceiling}.");
        }
        // A bucket smaller than one second's refill would quietly cap the rate at the bucket's size.
        if (options.Burst < options.PermitsPerSecondPerClient || options.Burst > Ceiling)
        {
            errors.Add($"{RateLimitOptions.SectionName}:Burst must be at least PermitsPerSecondPerClient and at most {Ceiling}.");
        }
        if (options.GlobalPermitsPerSecond is < 1 or > Ceiling)
        {
            errors.Add($"{RateLimitOptions.SectionName}:GlobalPermitsPerSecond must be between 1 and {Ceiling}.");
        }
        if (options.GlobalBurst < options.GlobalPermitsPerSecond || options.GlobalBurst > Ceiling)
        {
            errors.Add($"{RateLimitOptions.SectionName}:GlobalBurst must be at least GlobalPermitsPerSecond and at most {Ceiling}.");
        }
        if (options.ConcurrentCallsPerClient is < 1 or > 100_000)
        {
            errors.Add($"{RateLimitOptions.SectionName}:ConcurrentCallsPerClient must be between 1 and 100000.");
        }
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
