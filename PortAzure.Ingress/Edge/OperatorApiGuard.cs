using Microsoft.Extensions.Options;
using PortAzure.Ingress.Diagnostics;
using PortAzure.Security;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// Checks the operator key before YARP forwards anything to the Dispatcher. The Dispatcher checks it
/// again: the edge is the first wall, not the only one.
/// </summary>
internal static partial class OperatorApiGuard
{
    public static IApplicationBuilder UseOperatorApiKey(this IApplicationBuilder proxy) =>
        proxy.Use(async (context, next) =>
        {
            var key = context.RequestServices.GetRequiredService<IOptionsMonitor<AdminOptions>>().CurrentValue.ApiKey;
            var result = AdminApiKey.Check(context.Request, key);
            if (result != AdminApiKey.Result.Valid)
            {
                Log.Rejected(context.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(OperatorApiGuard)), result);
                await AdminApiKey.Reject(result).ExecuteAsync(context);
                return;
            }
            await next(context);
        });

    private static partial class Log
    {
        [LoggerMessage(EventIds.OperatorApiRejected, LogLevel.Warning, "Operator API call refused at the edge: {Result}")]
        public static partial void Rejected(ILogger logger, AdminApiKey.Result result);
    }
}
