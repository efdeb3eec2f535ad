using System.Net.Sockets;
using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>Whether an exception from a Redis call means Redis, or the connection to it, failed.</summary>
public static class RedisFailures
{
    /// <summary>
    /// The client's own exceptions and timeouts, and one it does not wrap: StackExchange.Redis 2.13 can surface a
    /// connection that dies while a command is being written as the pipe's <see cref="InvalidOperationException"/>
    /// ("Writing is not allowed after writer was completed"). Seen when Redis was killed under load
    /// (RedisRestartTests): the Ingress answered those calls 500, and the Dispatcher's finish did not retry it. Matched
    /// by the client's frames in its stack trace, so that an <see cref="InvalidOperationException"/> of our own still
    /// surfaces as the bug it is.
    /// The client also fails the commands still waiting for a reply on a connection that died with the socket's own
    /// exception, unwrapped, when the failure is reported a second time (its read and write loops race to report it):
    /// Pipelines.Sockets.Unofficial's <c>ConnectionResetException</c>, an <see cref="IOException"/>. Seen when Redis
    /// was killed under load (RedisRestartTests): the Dispatcher's finishes failing so were not retried, and their runs
    /// were posted again once their leases ran out.
    /// </summary>
    public static bool IsFailure(Exception exception) => exception switch
    {
        RedisException or TimeoutException => true,
        InvalidOperationException => FromClient(exception),
        // The client's socket layer only: Kestrel's own connection resets and bad requests are IOExceptions too, and an
        // app-wide handler must not answer a client's broken request as "Redis unavailable".
        IOException or SocketException => exception.GetType().Namespace == SocketLayerNamespace || FromClient(exception),
        _ => false,
    };

    /// <summary>
    /// Whether Redis refused the command only for now: a failover (READONLY, MASTERDOWN), a load after a restart
    /// (LOADING), a long script (BUSY), a cluster resharding or down (TRYAGAIN, CLUSTERDOWN). Any other refusal
    /// (WRONGTYPE, NOPERM, a script error) is no state that passes by itself.
    /// </summary>
    public static bool IsTransientRefusal(Exception exception) =>
        exception is RedisServerException && TransientRefusals.Any(code => exception.Message.StartsWith(code + " ", StringComparison.Ordinal));

    private static readonly string[] TransientRefusals = ["READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY", "CLUSTERDOWN"];

    /// <summary>
    /// Whether Redis refused the command because a key holds another type than the command works on: damaged data
    /// (or a key written by something else), not an outage. Retrying it changes nothing.
    /// </summary>
    public static bool IsWrongType(Exception exception) =>
        exception is RedisServerException && exception.Message.StartsWith("WRONGTYPE", StringComparison.Ordinal);

    /// <summary>
    /// Whether Redis refused a write because it is at <c>maxmemory</c> (with <c>noeviction</c>, as the relay needs): full,
    /// not away. Nothing of the refused script was written: Redis, over <c>maxmemory</c> when the script started, refuses
    /// a command that may add memory (flagged <c>denyoom</c>: SET, HSET, XADD; not HDEL, XACK or XAUTOCLAIM) only while
    /// the script has written nothing, whether or not that command would add any, and lets a script that has written
    /// go on to its end. Matched on Redis's text, which Redis 6.2 wraps in a script
    /// error ("ERR Error running script … -OOM command not allowed …") and 7 passes on as it is.
    /// </summary>
    public static bool IsOutOfMemory(Exception exception) =>
        exception is RedisServerException && exception.Message.Contains("OOM command not allowed", StringComparison.Ordinal);

    /// <summary>
    /// Whether the command may have run although its answer was lost (a timeout, a connection gone mid-call). Not a
    /// command that timed out in the client's backlog, waiting for a connection: it was never written to one.
    /// </summary>
    public static bool OutcomeUnknown(Exception exception) => exception switch
    {
        RedisConnectionException { CommandStatus: CommandStatus.WaitingInBacklog } => false,
        RedisTimeoutException { Commandstatus: CommandStatus.WaitingInBacklog } => false,
        _ => exception is TimeoutException or RedisConnectionException or InvalidOperationException or IOException or SocketException,
    };

    /// <summary>Thrown inside the client or its socket layer: their frames on the stack.</summary>
    private static bool FromClient(Exception exception) => exception.StackTrace is { } stack
        && (stack.Contains(ClientNamespace, StringComparison.Ordinal) || stack.Contains(SocketLayerNamespace + ".", StringComparison.Ordinal));

    private static readonly string ClientNamespace = typeof(IDatabase).Namespace + ".";

    // StackExchange.Redis's socket layer (Pipelines.Sockets.Unofficial), named by text: the Shared project does not
    // reference it directly.
    private const string SocketLayerNamespace = "Pipelines.Sockets.Unofficial";
}
