using System.Text.RegularExpressions;
using Aspire.StackExchange.Redis;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using PortAzure.Diagnostics;
using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>The services' one way to register the Redis connection (Aspire's client integration).</summary>
internal static partial class RedisClientSetup
{
    /// <summary>Aspire's own switches for Redis command spans; either one, when set, wins over our default.</summary>
    private static readonly string[] TracingSwitches =
    [
        "Aspire:StackExchange:Redis:DisableTracing",
        $"Aspire:StackExchange:Redis:{ResourceNames.Redis}:DisableTracing",
    ];

    /// <summary>Which pool completes Redis replies: <c>ThreadPool</c> (default) or <c>Dedicated</c>.</summary>
    public const string SocketManagerKey = "Redis:SocketManager";

    /// <summary>
    /// Registers <c>IConnectionMultiplexer</c> for the <c>redis</c> connection, with health checks (Redis answers; Redis
    /// is not full), logging and metrics, and connects it while the host starts rather than on the first request.
    /// </summary>
    public static IHostApplicationBuilder AddPortAzureRedisClient(this IHostApplicationBuilder builder, Action<StackExchangeRedisSettings>? configureSettings = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var tracingConfigured = IsTracingConfigured(builder.Configuration);
        // An unknown value stops the start with the other options' errors (thrown here, while the services were being
        // registered, it escaped the host and hid them): the connection is made only after that check
        // (CheckOptionsBeforeConnecting), and the default here is never used with an unknown value.
        var socketManager = SocketManagerFrom(builder.Configuration[SocketManagerKey]) ?? SocketManager.ThreadPool;
        builder.Services.AddOptions<RedisSocketManagerSetting>().BindConfiguration(RedisSocketManagerSetting.SectionName).ValidateOnStart();
        builder.Services.AddSingleton<IValidateOptions<RedisSocketManagerSetting>, RedisSocketManagerSetting.Validator>();
        // Read by Redis's client only when the connection is made, after the options are checked: a string it cannot read
        // stopped the start on its own, in a message naming no key, after the other errors had been mended.
        builder.Services.AddOptions<RedisConnectionStringSetting>()
            .Configure<IConfiguration>((setting, configuration) => setting.Value = configuration.GetConnectionString(ResourceNames.Redis))
            .ValidateOnStart();
        builder.Services.AddSingleton<IValidateOptions<RedisConnectionStringSetting>, RedisConnectionStringSetting.Validator>();
        builder.AddRedisClient(ResourceNames.Redis, settings =>
        {
            // Redis command spans are off unless configured: the instrumentation keeps every command's
            // profiling session until its next flush (10 s), which under load held 400+ MB and about 30 % of
            // the Ingress's CPU (docs/benchmarks.md). Our own producer and consumer spans already carry the
            // trace from Port's call through the stream to the Azure POST.
            if (!tracingConfigured)
            {
                settings.DisableTracing = true;
            }
            configureSettings?.Invoke(settings);
        }, options =>
        {
            // The default socket manager completes replies on its own pool of 10 threads, one more hand-off
            // per command; on two cores the extra wake-ups cost more than they save (70 -> 57 us of Ingress
            // CPU per run, docs/benchmarks.md). That pool guards against code that blocks pool threads on
            // Redis; the relay's calls are all asynchronous, and the one blocking call, Aspire's connect,
            // runs once while the host starts (RedisConnectionWarmup), before any request. The price: under
            // overload, replies wait in the same queue as incoming requests; "Dedicated" goes back.
            options.SocketManager = socketManager;
            // One try at start (the multiplexer keeps reconnecting in the background): the default three would hold
            // the start for three connect timeouts when nothing answers. A connection string's own value stands.
            // (ToString names connectRetry only when something set it: the connection string, or Aspire's binding.)
            if (!options.ToString(includePassword: false).Contains("connectRetry=", StringComparison.OrdinalIgnoreCase))
            {
                options.ConnectRetry = 1;
            }
            // Back soon after Redis is (the default backs off from 2.5 s up to 10 s): the Dispatcher records Azure's
            // answers inside its lease, and a late reconnect eats into it.
            options.ReconnectRetryPolicy = new ExponentialRetry(500, 2000);
        });
        CheckOptionsBeforeConnecting(builder.Services);
        builder.Services.AddHostedService<RedisConnectionWarmup>();
        builder.Services.AddSingleton<RedisMemoryHealthCheck>();
        builder.Services.AddHealthChecks().AddCheck<RedisMemoryHealthCheck>(RedisMemoryHealthCheck.Name);
        return builder;
    }

    /// <summary>
    /// Makes the connection run the start-up checks before it is made. The host builds its hosted services before it runs
    /// those checks, and building one that takes the connection (the Dispatcher's) made the connection: a connection string the
    /// checks refuse was used first, and the client's own errors printed what the checks keep quiet (a URL's password, the
    /// tail of a password cut by a comma), then stopped the start alone. Thrown here, the checks' one exception names every
    /// refused option, as the host's own run of them would have.
    /// </summary>
    private static void CheckOptionsBeforeConnecting(IServiceCollection services)
    {
        // The last registration is the one resolved.
        for (var i = services.Count - 1; i >= 0; i--)
        {
            if (services[i] is { ServiceType: var type, IsKeyedService: false, ImplementationFactory: { } connect, Lifetime: var lifetime }
                && type == typeof(IConnectionMultiplexer))
            {
                services[i] = new ServiceDescriptor(typeof(IConnectionMultiplexer), provider =>
                {
                    provider.GetService<IStartupValidator>()?.Validate();
                    return connect(provider);
                }, lifetime);
                return;
            }
        }
        // A later Aspire that registers the connection another way: the check would silently not happen.
        throw new InvalidOperationException("Aspire's Redis client registered no IConnectionMultiplexer factory to check the options before.");
    }

    /// <returns>Null for an unknown value.</returns>
    private static SocketManager? SocketManagerFrom(string? value) =>
        string.IsNullOrEmpty(value) || string.Equals(value, "ThreadPool", StringComparison.OrdinalIgnoreCase) ? SocketManager.ThreadPool
        // In any case, as .NET's configuration reads the names of other choices (AzureDevOps:SignatureFormat).
        : string.Equals(value, "Dedicated", StringComparison.OrdinalIgnoreCase) ? SocketManager.Shared
        : null;

    /// <summary><see cref="SocketManagerKey"/>, bound so that start-up validation checks it.</summary>
    internal sealed class RedisSocketManagerSetting
    {
        public const string SectionName = "Redis";

        public string? SocketManager { get; set; }

        internal sealed class Validator : IValidateOptions<RedisSocketManagerSetting>
        {
            public ValidateOptionsResult Validate(string? name, RedisSocketManagerSetting options) =>
                SocketManagerFrom(options.SocketManager) is null
                    ? ValidateOptionsResult.Fail($"{SocketManagerKey} must be ThreadPool or Dedicated, not '{options.SocketManager}'.")
                    : ValidateOptionsResult.Success;
        }
    }

    /// <summary><c>ConnectionStrings:redis</c>, checked at start as Redis's client reads it.</summary>
    internal sealed partial class RedisConnectionStringSetting
    {
        public const string Key = $"ConnectionStrings:{ResourceNames.Redis}";

        /// <summary>Null when not given: Aspire's own message says where it may be given.</summary>
        public string? Value { get; set; }

        // As the client reads the keyword: any case, spaces around the '='.
        [GeneratedRegex(@"(^|,)\s*password\s*=", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
        private static partial Regex Password();

        internal sealed class Validator : IValidateOptions<RedisConnectionStringSetting>
        {
            public ValidateOptionsResult Validate(string? name, RedisConnectionStringSetting options)
            {
                ArgumentNullException.ThrowIfNull(options);
                if (options.Value is not { } value)
                {
                    return ValidateOptionsResult.Skip;
                }
                if (string.IsNullOrWhiteSpace(value))
                {
                    return ValidateOptionsResult.Fail($"{Key} is empty: it must name the Redis server (host:port, then options such as password=…).");
                }
                if (value.Contains("://", StringComparison.Ordinal))
                {
                    // The client takes no URL: it reads one as a host name, user and password included, and its connection
                    // errors then print it. (Not quoted here either.)
                    return ValidateOptionsResult.Fail($"{Key} is a URL; StackExchange.Redis takes host:port, then options (such as " +
                        "myhost:6380,password=…,ssl=true). A URL's user and password would be read as a host name and shown in connection errors.");
                }
                try
                {
                    _ = ConfigurationOptions.Parse(value);
                    return ValidateOptionsResult.Success;
                }
                catch (ArgumentException ex)
                {
                    var reason = ExceptionMessages.WithoutParameter(ex);
                    if (Password().IsMatch(value))
                    {
                        // A comma ends a password in this syntax: the rest of one that holds a comma is read as an option, and
                        // the client's message quotes it (an apostrophe in it would defeat hiding only the quoted parts).
                        reason = "an option it does not know, or a value it cannot read (its message is not shown, as the string holds a " +
                            "password: a comma in a password ends it).";
                    }
                    return ValidateOptionsResult.Fail($"{Key} cannot be read as a Redis connection string: {reason}");
                }
            }
        }
    }

    /// <summary>True when configuration gives a value to one of Aspire's tracing switches.</summary>
    private static bool IsTracingConfigured(IConfiguration configuration) =>
        TracingSwitches.Any(key => !string.IsNullOrEmpty(configuration[key]));
}
