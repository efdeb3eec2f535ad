using System.Net.Sockets;
using System.Reflection;
using System.Runtime.ExceptionServices;
using Microsoft.Extensions.DependencyInjection;
using Pipelines.Sockets.Unofficial;
using StackExchange.Redis;

namespace PortAzure.Tests.Infrastructure;

/// <summary>
/// One asynchronous call on the database: the method's name, the script's text for a script, and the first key it names
/// (a script's first KEYS entry).
/// </summary>
public sealed record RedisCall(string Method, string? Script, string? Key = null)
{
    /// <summary>The call's arguments as the caller passed them.</summary>
    public IReadOnlyList<object?>? Arguments { get; init; }

    /// <summary>How a sweep prints the call: the method, a script's last line.</summary>
    public override string ToString() =>
        Script is { } script ? $"{Method} {script.Trim().Split('\n')[^1].Trim()} [{Key}]" : $"{Method} [{Key}]";
}

/// <summary>The Dispatcher's scripts, told apart by a line only each one has: what a fault plan picks its calls by.</summary>
public static class DispatcherScripts
{
    /// <summary>The begin of an attempt: the only script that reads counts as whole numbers.</summary>
    public static bool IsBegin(string script) => script.Contains("local function whole(v, max)", StringComparison.Ordinal);

    /// <summary>The finish of an attempt: the only script that writes finishedBy (and the Port report).</summary>
    public static bool IsFinish(string script) => script.Contains("'finishedBy', ARGV[5]", StringComparison.Ordinal);

    /// <summary>The replay of a dead letter: the only one that reads a record's trace context back.</summary>
    public static bool IsReplay(string script) =>
        script.Contains("'org', 'webhook', 'body', 'key', 'run', 'at', 'traceparent', 'tracestate'", StringComparison.Ordinal);
}

/// <summary>What happens to one call.</summary>
public enum ScriptFault
{
    None,

    /// <summary>The call fails without reaching Redis: the connection died before the server read it.</summary>
    NotRun,

    /// <summary>The script runs, and its reply is lost with the connection.</summary>
    ReplyLost,

    /// <summary>The call fails without reaching Redis, with an exception nobody classified as a Redis failure.</summary>
    NotRunUnclassified,

    /// <summary>The call runs, and its reply is lost with an exception nobody classified as a Redis failure.</summary>
    ReplyLostUnclassified,

    /// <summary>Redis refuses the call for memory, as a full one refuses a write (what Redis 6.2 does where 7 does not).</summary>
    OutOfMemory,
}

/// <summary>
/// A real Redis behind a service's <see cref="IConnectionMultiplexer"/>, whose script calls fail on demand the way
/// StackExchange.Redis fails them when the connection dies: with the socket's own exception, unwrapped (seen when Redis
/// was killed under load in RedisRestartTests). A kill cannot pick which command it cuts; this can.
/// (Asynchronous calls on the database only: the services' Redis calls are. A batch's are not failed; the services use
/// no transaction.)
/// </summary>
public static class FaultyRedis
{
    /// <summary>Wraps the registered multiplexer; <paramref name="fault"/> is asked for every script call, with the script's text.</summary>
    public static void FailScripts(IServiceCollection services, Func<string, ScriptFault> fault) =>
        FailCalls(services, call => call.Script is { } script ? fault(script) : ScriptFault.None);

    /// <summary>Wraps the registered multiplexer; <paramref name="fault"/> is asked for every asynchronous database call.</summary>
    /// <param name="hold">
    /// Asked for every call not failed, once it is sent: a task returned holds the call's reply
    /// until the task ends. How a test puts something between a call's run and what the caller does with its reply.
    /// </param>
    /// <param name="replied">
    /// Told of every call not failed once its reply has come, before any hold: how a test knows that
    /// Redis has run a call, where <paramref name="fault"/> and <paramref name="hold"/> know only that it was sent.
    /// </param>
    public static void FailCalls(IServiceCollection services, Func<RedisCall, ScriptFault> fault, Func<RedisCall, Task?>? hold = null,
        Action<RedisCall>? replied = null)
    {
        var registered = services.Last(d => d.ServiceType == typeof(IConnectionMultiplexer) && !d.IsKeyedService);
        services.Remove(registered);
        services.AddSingleton(provider => FailCalls(registered.ImplementationInstance as IConnectionMultiplexer
            ?? (IConnectionMultiplexer)registered.ImplementationFactory!(provider), fault, hold, replied));
    }

    /// <summary><paramref name="inner"/>, its asynchronous database calls meeting <paramref name="fault"/> (as above).</summary>
    public static IConnectionMultiplexer FailCalls(IConnectionMultiplexer inner, Func<RedisCall, ScriptFault> fault, Func<RedisCall, Task?>? hold = null,
        Action<RedisCall>? replied = null) =>
        Wrap<IConnectionMultiplexer, MultiplexerProxy>(inner, new Plan(fault, hold ?? (_ => null), replied));

    /// <summary>The exception the client gave the finish calls in flight when Redis was killed.</summary>
    public static Exception ConnectionReset() => new ConnectionResetException("Connection reset by peer", new SocketException(104));

    private static object? Forward(MethodInfo method, object target, object?[]? args)
    {
        try
        {
            return method.Invoke(target, args);
        }
        catch (TargetInvocationException ex) when (ex.InnerException is not null)
        {
            ExceptionDispatchInfo.Throw(ex.InnerException);
            throw;
        }
    }

    /// <summary><paramref name="inner"/> behind a <typeparamref name="TProxy"/> that follows <paramref name="plan"/>.</summary>
    private static T Wrap<T, TProxy>(T inner, Plan plan) where TProxy : FaultingProxy<T>
    {
        var proxy = DispatchProxy.Create<T, TProxy>();
        ((FaultingProxy<T>)(object)proxy!).Init(inner, plan);
        return proxy;
    }

    /// <summary>What to fail, which replies to hold, and whom to tell of replies.</summary>
    internal sealed record Plan(Func<RedisCall, ScriptFault> Fault, Func<RedisCall, Task?> Hold, Action<RedisCall>? Replied);

    /// <summary>A proxy of one client interface: the real object behind it, and what to fail.</summary>
    public abstract class FaultingProxy<T> : DispatchProxy
    {
        protected T Inner { get; private set; } = default!;

        internal Plan Plan { get; private set; } = null!;

        protected Func<RedisCall, ScriptFault> Fault => Plan.Fault;

        internal void Init(T inner, Plan plan)
        {
            Inner = inner;
            Plan = plan;
        }
    }

    public class MultiplexerProxy : FaultingProxy<IConnectionMultiplexer>
    {
        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
        {
            var result = Forward(targetMethod!, Inner, args);
            return result is IDatabase database ? Wrap<IDatabase, DatabaseProxy>(database, Plan) : result;
        }
    }

    public class DatabaseProxy : FaultingProxy<IDatabase>
    {
        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
        {
            var method = targetMethod!;
            if (!method.ReturnType.IsGenericType || method.ReturnType.GetGenericTypeDefinition() != typeof(Task<>))
            {
                return Forward(method, Inner, args);
            }
            var script = method.Name == nameof(IDatabase.ScriptEvaluateAsync) && args is [string text, ..] ? text : null;
            var call = new RedisCall(method.Name, script, FirstKey(args)) { Arguments = args };
            var (runs, thrown) = Effect(Fault(call));
            var result = method.ReturnType.GetGenericArguments()[0];
            if (!runs)
            {
                return Generic(nameof(FailAsync), result).Invoke(null, [thrown]);
            }
            // Sent first: the hold begins once the call is on its way.
            var forwarded = Forward(method, Inner, args);
            if (thrown is not null)
            {
                return Generic(nameof(LoseReplyAsync), result).Invoke(null, [forwarded, thrown]);
            }
            var hold = Plan.Hold(call);
            return hold is null && Plan.Replied is null ? forwarded
                : Generic(nameof(HoldReplyAsync), result).Invoke(null, [forwarded, call, hold, Plan.Replied]);
        }

        /// <summary>Whether a call failed so reaches Redis, and what its caller gets instead of the reply (null: the reply).</summary>
        internal static (bool Runs, Exception? Thrown) Effect(ScriptFault fault) => fault switch
        {
            ScriptFault.None => (true, null),
            ScriptFault.NotRun => (false, ConnectionReset()),
            ScriptFault.NotRunUnclassified => (false, Unclassified()),
            ScriptFault.ReplyLostUnclassified => (true, Unclassified()),
            ScriptFault.OutOfMemory => (false, new RedisServerException("OOM command not allowed when used memory > 'maxmemory'.")),
            _ => (true, ConnectionReset()),
        };

        internal static MethodInfo Generic(string name, Type result) =>
            typeof(DatabaseProxy).GetMethod(name, BindingFlags.NonPublic | BindingFlags.Static)!.MakeGenericMethod(result);

        internal static Task<T> FailAsync<T>(Exception exception) => Task.FromException<T>(exception);

        internal static async Task<T> HoldReplyAsync<T>(Task<T> call, RedisCall sent, Task? hold, Action<RedisCall>? replied)
        {
            var reply = await call;
            replied?.Invoke(sent);
            if (hold is not null)
            {
                await hold;
            }
            return reply;
        }

        internal static async Task<T> LoseReplyAsync<T>(Task<T> call, Exception exception)
        {
            await call;
            throw exception;
        }

        internal static ObjectDisposedException Unclassified() => new("the socket");

        /// <summary>The first key a call names: its first argument, or a script's first KEYS entry.</summary>
        internal static string? FirstKey(object?[]? args) => args switch
        {
            [RedisKey key, ..] => key.ToString(),
            [string, RedisKey[] { Length: > 0 } keys, ..] => keys[0].ToString(),
            _ => null,
        };
    }
}
