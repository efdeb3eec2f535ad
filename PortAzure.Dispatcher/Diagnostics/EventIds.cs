namespace PortAzure.Dispatcher.Diagnostics;

/// <summary>The Dispatcher's log event ids, in one table.</summary>
internal static class EventIds
{
    public const int Delivered = 2001;
    public const int RetryScheduled = 2002;
    public const int DeadLettered = 2003;
    public const int LeaseHeld = 2004;
    public const int AlreadyFinished = 2005;
    public const int TargetPaused = 2006;
    public const int RedisRetry = 2007;
    public const int NotPostedAtStop = 2008;
    public const int FinishFailedUnexpectedly = 2009;
    public const int RedisFullRetry = 2010;

    public const int WorkerStarted = 2101;
    public const int GroupCreated = 2102;
    public const int RedisError = 2103;
    public const int Claimed = 2104;
    public const int MalformedEntry = 2105;
    public const int ProcessingFailed = 2106;
    public const int ShuttingDown = 2107;
    public const int ShutdownAbandoned = 2108;
    public const int Abandoned = 2109;
    public const int TimeoutBeyondGrace = 2110;
    public const int ReadBack = 2111;
    public const int ClaimedAgain = 2112;
    public const int RedisFull = 2113;
    public const int ClaimedWhileFull = 2114;

    public const int ReportSent = 2201;
    public const int ReportFailed = 2202;
    public const int ReportMalformed = 2203;
    public const int ReportCallFailed = 2204;
    public const int ReportQueueError = 2205;
    public const int PortCredentialsRefused = 2206;
    public const int PortThrottled = 2207;
    public const int ReportHandedBack = 2208;
    public const int ReportTakenOver = 2209;
    public const int ReportAlreadyEnded = 2210;
    public const int ReportTrimmed = 2211;
    public const int ReportsTrimmed = 2212;
    public const int PortFailingForAll = 2213;
    public const int PortAnswersAgain = 2214;
    public const int ReportReclaimTooShort = 2215;
    public const int PortApiPlainHttp = 2216;
    public const int PortTokenCallFailed = 2217;
    public const int ReportNotQueued = 2218;
    public const int PortLogCallAnswered = 2219;
    public const int ReportQueueFull = 2220;

    public const int Replayed = 2302;
    public const int OperatorApiRedisUnavailable = 2303;
    public const int ReplayStopped = 2304;
    public const int OperatorApiKeyDamaged = 2305;
}
