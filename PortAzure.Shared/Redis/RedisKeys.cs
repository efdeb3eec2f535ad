namespace PortAzure.Redis;

/// <summary>
/// Every Redis key the relay uses. All keys share the hash tag <c>{portazure}</c> so that the
/// Lua scripts that touch several of them stay valid on Redis Cluster (one slot).
/// </summary>
public static class RedisKeys
{
    public const string Prefix = "{portazure}:";

    /// <summary>The stream of accepted runs waiting for delivery.</summary>
    public const string Stream = Prefix + "runs";

    /// <summary>The consumer group the Dispatchers read <see cref="Stream"/> through.</summary>
    public const string ConsumerGroup = "dispatchers";

    /// <summary>Pub/sub channel the Ingress publishes on with each entry to wake the Dispatchers.</summary>
    public const string WakeChannel = Prefix + "wake";

    /// <summary>Sorted set of delivery ids waiting for a retry, scored by due time (Unix ms).</summary>
    public const string RetrySchedule = Prefix + "retries";

    /// <summary>
    /// Hash of delivery ids claimed from <see cref="RetrySchedule"/> and not yet finished (id to number of
    /// claims). A claim that finds its id here again follows one that never finished: a crashed replica.
    /// </summary>
    public const string RetryClaims = Prefix + "retry-claims";

    /// <summary>
    /// The ids one claim of <see cref="RetrySchedule"/> took, until its reply comes (at most its lease): a claim whose
    /// reply was lost is undone by its token.
    /// </summary>
    public static string RetryClaimBatch(string claimToken) => $"{Prefix}retry-claim:{claimToken}";

    /// <summary>Sorted set of dead-lettered delivery ids, scored by dead-letter time (Unix ms).</summary>
    public const string DeadLetters = Prefix + "deadletters";

    /// <summary>
    /// Stream of reports for Port's API, written by the step that finishes a delivery, removed once sent
    /// (or given up on) by whichever Dispatcher's reporter took it.
    /// </summary>
    public const string PortReports = Prefix + "port-reports";

    /// <summary>About how many reports <see cref="PortReports"/> keeps (XADD MAXLEN ~) while Port's API is away.</summary>
    public const int PortReportsMaxLength = 100_000;

    /// <summary>The consumer group the Dispatchers read <see cref="PortReports"/> through.</summary>
    public const string PortReportersGroup = "port-reporters";

    /// <summary>Hash of paused targets (<c>org/webhook</c> to resume-probe time, Unix ms).</summary>
    public const string PausedTargets = Prefix + "paused";

    /// <summary>Hash of consecutive transient failures per target.</summary>
    public const string TargetFailures = Prefix + "target-failures";

    /// <summary>
    /// A run's idempotency key, per target. Azure and the target list take org and webhook in any case, and Port's
    /// signature does not cover the path: one spelling per target, or a replay in capitals would be a second run.
    /// </summary>
    public static string Idempotency(string org, string webhook, string key) => $"{Prefix}idem:{Target(org, webhook)}/{key}";

    /// <summary>
    /// A signed call, by a hash of what its signature covers (<c>v1:</c> timestamp and body, <c>legacy:</c> the body), for
    /// every target: the signature does not cover the path, so the same call sent to another webhook is a replay too.
    /// </summary>
    public static string SignedCall(string signedContentHash) => $"{Prefix}replay:{signedContentHash}";

    /// <summary>A target as the relay's keys and target state name it: <c>org/webhook</c>, in lower case.</summary>
    /// <remarks>Org and webhook names are ASCII letters, digits, '-' and '_' (TargetNames), so the invariant lower case is exact.</remarks>
    public static string Target(string org, string webhook) => $"{org.ToLowerInvariant()}/{webhook.ToLowerInvariant()}";

    public static string Delivery(string deliveryId) => $"{Prefix}delivery:{deliveryId}";

    public static string Attempts(string deliveryId) => $"{Prefix}attempts:{deliveryId}";

    public static string Lease(string deliveryId) => $"{Prefix}lease:{deliveryId}";

    /// <summary>A delivery record found to be no hash (damaged, or written by something else), kept for a person to look at.</summary>
    public static string DamagedDelivery(string deliveryId) => $"{Prefix}damaged:{deliveryId}";

    public static string RunIndex(string runId) => $"{Prefix}run:{runId}";
}
