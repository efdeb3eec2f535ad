using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Ingress.Queue;

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
internal sealed class ReplicaConfirmation(IConnectionMultiplexer redis)
{
    private readonly Lock _gate = new();
    private Batch? _next;
    private bool _running;

    /// <summary>
    /// The number of replicas that acknowledged every write this process had sent before the call (at most the
    /// number asked for: Redis returns as soon as that many have, or when the timeout passes with fewer).
    /// </summary>
    public Task<long> WaitAsync(int replicas, TimeSpan timeout)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(replicas);
        lock (_gate)
        {
            var batch = _next ??= new Batch(replicas, (long)Math.Max(1, timeout.TotalMilliseconds));
            if (!_running)
            {
                _running = true;
                _ = Task.Run(SendAsync);
            }
            return batch.Completion.Task;
        }
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
                var server = redis.GetServer((RedisKey)RedisKeys.Stream);
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
