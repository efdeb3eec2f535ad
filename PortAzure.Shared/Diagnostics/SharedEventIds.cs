namespace PortAzure.Diagnostics;

/// <summary>Log event ids of the code both services share, in one table (the services' own start at 1001 and 2001).</summary>
internal static class SharedEventIds
{
    public const int RedisNotConnectedAtStart = 3001;
    public const int OpenTargets = 3002;
    public const int RedisMemoryUnreadable = 3003;
}
