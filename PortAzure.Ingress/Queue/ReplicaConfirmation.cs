using System.Net;
using PortAzure.Redis;
using StackExchange.Redis;

namespace PortAzure.Ingress.Queue;

/// <summary>
/// Where a write is about to go: the server the client routes the relay's keys to, and how many sockets it has opened
/// so far (<see cref="ReplicaConfirmation.Stamp"/>). <see cref="Server"/> is null when that could not be read.
/// </summary>
internal readonly record struct WriteStamp(EndPoint? Server, long Sockets);

/// <summary>
/// What a <c>WAIT</c> answered: the replicas that hold the writes, unless the <c>WAIT</c> went to another server, or
/// over another connection, than the write it was to cover (then the count says nothing about that write).
/// </summary>
internal readonly record struct ReplicaAcknowledgement(long Replicas, bool ConnectionChanged)
{
    public bool Confirms(int replicas) => !ConnectionChanged && Replicas >= replicas;
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
/// <para>
/// That holds only while the connection is the same one. A <c>WAIT</c> on a new connection (after a reconnect) counts
/// none of the old one's writes and answers at once with every replica connected; one sent to another server (the
/// client's slot map changed: a failover, a redirection) counts that server's replicas. So each caller stamps its
/// write (<see cref="Stamp"/>) before sending it, and a <c>WAIT</c> that went elsewhere, or after that server's client
/// opened a new socket, does not confirm it. StackExchange.Redis counts a socket when it starts opening it
/// (PhysicalBridge.TryConnect), before any command can go on it, so a reconnect is seen even before the client's own
/// failure event is raised (read in its source; the tests kill a connection and check the count, not the order).
/// </para>
/// </remarks>
internal sealed class ReplicaConfirmation(IConnectionMultiplexer redis)
{
    private readonly Lock _gate = new();
    private Batch? _next;
    private bool _running;

    /// <summary>Taken before the write that a <see cref="WaitAsync"/> is to cover; never throws.</summary>
    public WriteStamp Stamp()
    {
        try
        {
            var server = Server();
            return new WriteStamp(server.EndPoint, Sockets(server));
        }
        catch (Exception ex) when (RedisFailures.IsFailure(ex) || ex is ObjectDisposedException)
        {
            return default;
        }
    }

    /// <summary>
    /// How many replicas acknowledged every write this process had sent before the call (at most the number asked
    /// for: Redis returns as soon as that many have, or when the timeout passes with fewer), and whether the
    /// <c>WAIT</c> went elsewhere than the write <paramref name="stamp"/> describes.
    /// </summary>
    public async Task<ReplicaAcknowledgement> WaitAsync(int replicas, TimeSpan timeout, WriteStamp stamp)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(replicas);
        Task<Waited> waited;
        lock (_gate)
        {
            var batch = _next ??= new Batch(replicas, (long)Math.Max(1, timeout.TotalMilliseconds));
            if (!_running)
            {
                _running = true;
                _ = Task.Run(SendAsync);
            }
            waited = batch.Completion.Task;
        }
        var result = await waited;
        var changed = stamp.Server is null || !stamp.Server.Equals(result.Server) || stamp.Sockets != result.SocketsAfter;
        return new ReplicaAcknowledgement(result.Replicas, changed);
    }

    // The server that holds the relay's slot (on a cluster, the node the enqueue script goes to).
    private IServer Server() => redis.GetServer((RedisKey)RedisKeys.Stream);

    // The interactive sockets the client has opened to this server (that one server's: a reconnect to another, such as
    // a dead replica named in the connection string, must not make waiters unconfirmed; the endpoint is compared too).
    private static long Sockets(IServer server) => server.GetCounters().Interactive.SocketCount;

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
                var server = Server();
                var acknowledged = await server.ExecuteAsync("WAIT", batch.Replicas, batch.TimeoutMilliseconds);
                // Read after the answer: a socket opened before the WAIT was sent is counted by then.
                batch.Completion.SetResult(new Waited((long)acknowledged, server.EndPoint, Sockets(server)));
            }
            catch (Exception ex)
            {
                batch.Completion.SetException(ex);
            }
        }
    }

    private readonly record struct Waited(long Replicas, EndPoint Server, long SocketsAfter);

    private sealed class Batch(int replicas, long timeoutMilliseconds)
    {
        public int Replicas { get; } = replicas;

        public long TimeoutMilliseconds { get; } = timeoutMilliseconds;

        public TaskCompletionSource<Waited> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
