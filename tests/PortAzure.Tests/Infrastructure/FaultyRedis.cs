using System.Net.Sockets;
using System.Reflection;
using System.Runtime.ExceptionServices;
using Microsoft.Extensions.DependencyInjection;
using Pipelines.Sockets.Unofficial;
using StackExchange.Redis;

namespace PortAzure.Tests.Infrastructure;

/// <summary>What happens to one script call.</summary>
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
/// </summary>
public static class FaultyRedis
{
    /// <summary>Wraps the registered multiplexer; <paramref name="fault"/> is asked for every script call, with the script's text.</summary>
    public static void FailScripts(IServiceCollection services, Func<string, ScriptFault> fault)
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
        private Func<string, ScriptFault> _fault = null!;

        internal void Init(IConnectionMultiplexer inner, Func<string, ScriptFault> fault)
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
        private Func<string, ScriptFault> _fault = null!;

        internal void Init(IDatabase inner, Func<string, ScriptFault> fault)
        {
            _inner = inner;
            _fault = fault;
        }

        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
        {
            var method = targetMethod!;
            if (method.Name != nameof(IDatabase.ScriptEvaluateAsync) || args is not [string script, ..])
            {
                return Forward(method, _inner, args);
            }
            return _fault(script) switch
            {
                ScriptFault.NotRun => Task.FromException<RedisResult>(ConnectionReset()),
                ScriptFault.NotRunUnclassified => Task.FromException<RedisResult>(new ObjectDisposedException("the socket")),
                ScriptFault.ReplyLost => LoseReplyAsync((Task<RedisResult>)Forward(method, _inner, args)!),
                _ => Forward(method, _inner, args),
            };
        }

        private static async Task<RedisResult> LoseReplyAsync(Task<RedisResult> call)
        {
            await call;
            throw ConnectionReset();
        }
    }
}
