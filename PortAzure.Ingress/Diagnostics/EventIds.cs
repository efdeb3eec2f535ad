namespace PortAzure.Ingress.Diagnostics;

/// <summary>The Ingress's log event ids, in one table.</summary>
internal static class EventIds
{
    public const int Accepted = 1001;
    public const int Duplicate = 1002;
    public const int Rejected = 1003;
    public const int QueueUnavailable = 1004;
    public const int RejectedAgain = 1005;
    public const int DuplicateAgain = 1006;
    public const int LegacySignaturesAccepted = 1007;
    public const int QueueFull = 1008;
    public const int ReplicationUnconfirmed = 1009;
    public const int QueueKeyDamaged = 1010;
    public const int OperatorApiRejected = 1101;
    public const int RateLimited = 1102;
    public const int OperatorApiRejectedAgain = 1103;
    public const int TooManyOpenCalls = 1104;
}
