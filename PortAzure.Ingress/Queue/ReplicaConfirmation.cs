using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Ingress.Queue;

/// <summary>What a <c>WAIT</c> answered: the replicas that hold the writes, unless a connection failed meanwhile.</summary>
internal readonly record struct ReplicaAcknowledgement(long Replicas, bool ConnectionFailed)
{
    public bool Confirms(int replicas) => !ConnectionFailed && Replicas >= replicas;
}

/// <summary>
/// Asks Redis (<c>WAIT</c>) how many replicas hold this process's writes, so that a run can be answered only once it
/// would survive a failover (<c>Ingress:WaitForReplicas</c>). Replication is asynchronous: without this, a primary
/// lost right after a 202 takes the run with it.
/// </summary>
/// <remarks>
/// <c>WAIT</c> counts the writes of the connection it is sent on, and blocks that connection until it returns. The
/// client sends every command to a server over one connection, so one <c>WAIT</c> covers every run whose script had
/// been answered before it was sent, and each <c>WAIT</c> holds up all the others' commands: callers that arrive while
/// one is out wait for the next, which covers them all (a group commit). A caller's script was answered before it
/// called, so its write was on the connection before that next <c>WAIT</c>; the one already out may have been sent
/// earlier, so it cannot count for them.
/// </remarks>
internal sealed class ReplicaConfirmation
{
    private readonly IConnectionMultiplexer _redis;
    private readonly Lock _gate = new();
    private Batch? _next;
    private bool _running;
    private long _connectionFailures;

    public ReplicaConfirmation(IConnectionMultiplexer redis)
    {
        ArgumentNullException.ThrowIfNull(redis);
        _redis = redis;
        // A WAIT sent on a new connection counts that connection's writes only: none, so it would answer at once with
        // every replica connected, whatever happened to the writes made on the one that failed (after a failover: on
        // another server). The client reports a failure before it can have reconnected (its heartbeat, every second).
        redis.ConnectionFailed += (_, _) => Interlocked.Increment(ref _connectionFailures);
    }

    /// <summary>Read before the write that a <see cref="WaitAsync"/> is to cover.</summary>
    public long ConnectionEpoch => Interlocked.Read(ref _connectionFailures);

    /// <summary>
    /// How many replicas acknowledged every write this process had sent before the call (at most the number asked
    /// for: Redis returns as soon as that many have, or when the timeout passes with fewer), and whether a connection
    /// failed since <paramref name="epoch"/> (<see cref="ConnectionEpoch"/>), in which case the count says nothing.
    /// </summary>
    public async Task<ReplicaAcknowledgement> WaitAsync(int replicas, TimeSpan timeout, long epoch)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(replicas);
        Task<long> acknowledged;
        lock (_gate)
        {
            var batch = _next ??= new Batch(replicas, (long)Math.Max(1, timeout.TotalMilliseconds));
            if (!_running)
            {
                _running = true;
                _ = Task.Run(SendAsync);
            }
            acknowledged = batch.Completion.Task;
        }
        var count = await acknowledged;
        return new ReplicaAcknowledgement(count, ConnectionEpoch != epoch);
    }

    private async Task SendAsync()
    {
        while (true)
        {
            Batch batch;
            lock (_gate)
            {
                if (_next is null)
                {
                    _running = false;
                    return;
                }
                batch = _next;
                _next = null;
            }
            try
            {
                // The server that holds the relay's slot (on a cluster, the node the enqueue script went to).
                var server = _redis.GetServer((RedisKey)RedisKeys.Stream);
                var acknowledged = await server.ExecuteAsync("WAIT", batch.Replicas, batch.TimeoutMilliseconds);
                batch.Completion.SetResult((long)acknowledged);
            }
            catch (Exception ex)
            {
                batch.Completion.SetException(ex);
            }
        }
    }

    private sealed class Batch(int replicas, long timeoutMilliseconds)
    {
        public int Replicas { get; } = replicas;

        public long TimeoutMilliseconds { get; } = timeoutMilliseconds;

        public TaskCompletionSource<long> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
