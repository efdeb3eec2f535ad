using Microsoft.Extensions.Options;
using PortAzure.Security;
using StackExchange.Redis;

namespace PortAzure.Ingress.Webhooks;

/// <summary>The webhook edge's rules (<c>Ingress:*</c>).</summary>
internal sealed class IngressOptions
{
    public const string SectionName = "Ingress";

    /// <summary>How far <c>X-Port-Timestamp</c> may be from our clock, either way.</summary>
    public int TimestampToleranceSeconds { get; set; } = 300;

    public long MaxBodyBytes { get; set; } = 1024 * 1024;

    /// <summary>Accept Port's older body-only HMAC-SHA1 signature (no timestamp, so no replay window).</summary>
    public bool AllowLegacySha1Signature { get; set; }

    /// <summary>How long an accepted idempotency key is remembered.</summary>
    public int IdempotencyWindowHours { get; set; } = 168;

    /// <summary>Nesting limit when the body is parsed to find the run id.</summary>
    public int MaxJsonDepth { get; set; } = 64;

    /// <summary>Longest accepted run id or <c>Idempotency-Key</c>.</summary>
    public int MaxRunIdLength { get; set; } = 200;

    /// <summary>
    /// Verified runs waiting for Redis at once; more are answered 503 (0: no cap). At ~2 ms a call, 1,000
    /// is far above what one replica has in flight (~30 at its maximum rate here): a few MB of buffers for Port's runs of
    /// a few KB, but up to 1,000 × <see cref="MaxBodyBytes"/> (1 GiB) of signed bodies while Redis stalls, if every run is large.
    /// </summary>
    public int MaxConcurrentCalls { get; set; } = 1000;

    /// <summary>
    /// Replicas of the Redis primary that must hold a run before it is answered 202 (Redis <c>WAIT</c>); 0: the
    /// primary's own acknowledgement (replication is asynchronous, so a failover can lose the last runs answered).
    /// </summary>
    public int WaitForReplicas { get; set; }

    /// <summary>How long Redis waits for those replicas before the call is answered 503 (the run stays queued).</summary>
    public int ReplicaWaitMilliseconds { get; set; } = 500;

    /// <summary>The networks (CIDR) of the proxies whose <c>X-Forwarded-For</c> is believed; empty: the framework's rule (Edge/TrustedProxies).</summary>
    public IList<string> TrustedProxyNetworks { get; } = [];
}

internal sealed class IngressOptionsValidator : IValidateOptions<IngressOptions>
{
    public ValidateOptionsResult Validate(string? name, IngressOptions options)
    {
        var errors = new List<string>();
        if (options.TimestampToleranceSeconds is < 1 or > 86_400)
        {
            errors.Add("Ingress:TimestampToleranceSeconds must be between 1 and 86400.");
        }
        if (options.MaxBodyBytes is < 2 or > 64 * 1024 * 1024)
        {
            errors.Add("Ingress:MaxBodyBytes must be between 2 and 67108864.");
        }
        if (options.IdempotencyWindowHours is < 1 or > 24 * 90)
        {
            errors.Add("Ingress:IdempotencyWindowHours must be between 1 and 2160.");
        }
        if (options.MaxJsonDepth is < 2 or > 1000)
        {
            errors.Add("Ingress:MaxJsonDepth must be between 2 and 1000.");
        }
        if (options.MaxRunIdLength is < 8 or > 1024)
        {
            errors.Add("Ingress:MaxRunIdLength must be between 8 and 1024.");
        }
        if (options.MaxConcurrentCalls is < 0 or > 100_000)
        {
            errors.Add("Ingress:MaxConcurrentCalls must be between 0 (no cap) and 100000.");
        }
        if (options.WaitForReplicas is < 0 or > 16)
        {
            errors.Add("Ingress:WaitForReplicas must be between 0 (no waiting) and 16.");
        }
        // WAIT holds up every other command on the connection, and a wait longer than the client's own timeout
        // (asyncTimeout, 5 s by default) would be cut short as a Redis failure.
        if (options.ReplicaWaitMilliseconds is < 10 or > 2000)
        {
            errors.Add("Ingress:ReplicaWaitMilliseconds must be between 10 and 2000.");
        }
        foreach (var network in options.TrustedProxyNetworks)
        {
            if (!System.Net.IPNetwork.TryParse(network, out _))
            {
                errors.Add($"Ingress:TrustedProxyNetworks holds '{network}', which is not a network in CIDR notation (such as 10.0.0.0/8).");
            }
        }
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}

/// <summary>
/// A replica wait must end well inside the Redis client's own timeout (the connection string's <c>asyncTimeout</c>, 5 s
/// unless set). A <c>WAIT</c> holds up the commands queued behind it on the connection, so a wait near that timeout makes
/// them time out too: every call would be answered 503, with the runs queued and none confirmed.
/// </summary>
internal sealed class ReplicaWaitValidator(IOptions<ConfigurationOptions> redis) : IValidateOptions<IngressOptions>
{
    public ValidateOptionsResult Validate(string? name, IngressOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.WaitForReplicas <= 0)
        {
            return ValidateOptionsResult.Success;
        }
        int asyncTimeout;
        try
        {
            asyncTimeout = redis.Value.AsyncTimeout;
        }
        catch (ArgumentException)
        {
            // A connection string Redis's client cannot read: the connection reports that itself.
            return ValidateOptionsResult.Skip;
        }
        // The commands behind a WAIT need time of their own before the timeout: a second, or half of a short timeout.
        var longest = Math.Max(asyncTimeout / 2, asyncTimeout - 1000);
        return options.ReplicaWaitMilliseconds > longest
            ? ValidateOptionsResult.Fail($"Ingress:ReplicaWaitMilliseconds ({options.ReplicaWaitMilliseconds}) must be at most {longest} with the Redis " +
                $"connection's asyncTimeout of {asyncTimeout} ms (1 s under it, or half of it if that is more): a WAIT holds up the Redis commands behind it. " +
                "Lower it, or raise asyncTimeout in the connection string.")
            : ValidateOptionsResult.Success;
    }
}

/// <summary>The Ingress cannot verify anything without Port's client secret.</summary>
internal sealed class IngressPortOptionsValidator : IValidateOptions<PortOptions>
{
    public ValidateOptionsResult Validate(string? name, PortOptions options)
    {
        var errors = options.SecretShapeErrors().ToList();
        if (string.IsNullOrEmpty(options.ClientSecret))
        {
            errors.Add("Port:ClientSecret is required (environment variable Port__ClientSecret): it verifies Port's signatures.");
        }
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
