using System.Net.Sockets;
using System.Reflection;
using System.Runtime.ExceptionServices;
using Microsoft.Extensions.DependencyInjection;
using Pipelines.Sockets.Unofficial;
using StackExchange.Redis;

namespace PortAzure.Tests.Infrastructure;

/// <summary>One asynchronous call on the database: the method's name, and the script's text for a script.</summary>
public sealed record RedisCall(string Method, string? Script);

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
}

/// <summary>
/// A real Redis behind a service's <see cref="IConnectionMultiplexer"/>, whose script calls fail on demand the way
/// StackExchange.Redis fails them when the connection dies: with the socket's own exception, unwrapped (seen when Redis
/// was killed under load in RedisRestartTests). A kill cannot pick which command it cuts; this can.
/// (Asynchronous calls on the database only: the services' Redis calls are.)
/// </summary>
public static class FaultyRedis
{
    /// <summary>Wraps the registered multiplexer; <paramref name="fault"/> is asked for every script call, with the script's text.</summary>
    public static void FailScripts(IServiceCollection services, Func<string, ScriptFault> fault) =>
        FailCalls(services, call => call.Script is { } script ? fault(script) : ScriptFault.None);

    /// <summary>Wraps the registered multiplexer; <paramref name="fault"/> is asked for every asynchronous database call.</summary>
    public static void FailCalls(IServiceCollection services, Func<RedisCall, ScriptFault> fault)
    {
        var registered = services.Last(d => d.ServiceType == typeof(IConnectionMultiplexer) && !d.IsKeyedService);
        services.Remove(registered);
        services.AddSingleton(provider =>
        {
            var inner = registered.ImplementationInstance as IConnectionMultiplexer
                ?? (IConnectionMultiplexer)registered.ImplementationFactory!(provider);
            var proxy = DispatchProxy.Create<IConnectionMultiplexer, MultiplexerProxy>();
            ((MultiplexerProxy)(object)proxy).Init(inner, fault);
            return proxy;
        });
    }

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

    public class MultiplexerProxy : DispatchProxy
    {
        private IConnectionMultiplexer _inner = null!;
        private Func<RedisCall, ScriptFault> _fault = null!;

        internal void Init(IConnectionMultiplexer inner, Func<RedisCall, ScriptFault> fault)
        {
            _inner = inner;
            _fault = fault;
        }

        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
        {
            var result = Forward(targetMethod!, _inner, args);
            if (result is IDatabase database)
            {
                var proxy = DispatchProxy.Create<IDatabase, DatabaseProxy>();
                ((DatabaseProxy)(object)proxy).Init(database, _fault);
                return proxy;
            }
            return result;
        }
    }

    public class DatabaseProxy : DispatchProxy
    {
        private IDatabase _inner = null!;
        private Func<RedisCall, ScriptFault> _fault = null!;

        internal void Init(IDatabase inner, Func<RedisCall, ScriptFault> fault)
        {
            _inner = inner;
            _fault = fault;
        }

        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
        {
            var method = targetMethod!;
            if (!method.ReturnType.IsGenericType || method.ReturnType.GetGenericTypeDefinition() != typeof(Task<>))
            {
                return Forward(method, _inner, args);
            }
            var script = method.Name == nameof(IDatabase.ScriptEvaluateAsync) && args is [string text, ..] ? text : null;
            var fault = _fault(new RedisCall(method.Name, script));
            if (fault == ScriptFault.None)
            {
                return Forward(method, _inner, args);
            }
            var result = method.ReturnType.GetGenericArguments()[0];
            return fault switch
            {
                ScriptFault.NotRun => Generic(nameof(FailAsync), result).Invoke(null, [ConnectionReset()]),
                ScriptFault.NotRunUnclassified => Generic(nameof(FailAsync), result).Invoke(null, [new ObjectDisposedException("the socket")]),
                _ => Generic(nameof(LoseReplyAsync), result).Invoke(null, [Forward(method, _inner, args)]),
            };
        }

        private static MethodInfo Generic(string name, Type result) =>
            typeof(DatabaseProxy).GetMethod(name, BindingFlags.NonPublic | BindingFlags.Static)!.MakeGenericMethod(result);

        private static Task<T> FailAsync<T>(Exception exception) => Task.FromException<T>(exception);

        private static async Task<T> LoseReplyAsync<T>(Task<T> call)
        {
            await call;
            throw ConnectionReset();
        }
    }
}
